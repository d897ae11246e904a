"""Merge `sampler-table` JSON files of the same model, N and floor into one, keeping every run's command.

Each `sampler-table` run draws its own floor from the same seeded random training sets, so runs with the same
``--n``, ``--floor-sets`` and ``--seed`` have the same floor (checked to a relative 1e-4, float32 round-off of the
features; a mismatch is an error), and their rows can stand in one table; the first run's floor is kept. Run:

    python scripts/merge_sampler_tables.py results/pc.json results/em.json results/heun.json \\
        --out ddpm_lib/weights/mnist-samplers-sde.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def merge(tables: list[dict]) -> dict:
    """One table with every row, in order; ``commands`` lists the runs. Raises ValueError if the runs differ."""
    keys = ("checkpoint", "n", "floor", "floor_sd", "floor_sets", "floor_seed", "floor_values", "n_bootstrap")
    first = tables[0]
    for other in tables[1:]:
        differ = [k for k in keys if k not in ("floor", "floor_sd", "floor_values") and other.get(k) != first.get(k)]
        # the same training digits give the same floor up to float32 round-off of the features
        if any(abs(a - b) > 1e-4 * a for a, b in zip(other["floor_values"], first["floor_values"])):
            differ.append("floor_values")
        if differ:
            raise ValueError(f"these runs cannot share one table: they differ in {differ}.")
    return {**{k: first[k] for k in keys}, "commands": [t["command"] for t in tables],
            "threads": sorted({t["threads"] for t in tables}), "device": sorted({t["device"] for t in tables}),
            "rows": [row for t in tables for row in t["rows"]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tables", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    merged = merge([json.loads(Path(f).read_text()) for f in args.tables])
    merged["merged_by"] = " ".join(["python scripts/merge_sampler_tables.py", *sys.argv[1:]]) if argv is None else None
    Path(args.out).write_text(json.dumps(merged, indent=2) + "\n")
    print(f"{len(merged['rows'])} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
