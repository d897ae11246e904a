"""What every training loop of the library shares: the run folder, resuming, the metrics log, the optimizer's
state as tensors, and the batch order (a pure function of the seed and the position in the run).
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from ..checkpoint import write_atomic

__all__ = ["CHECKPOINT_NAME", "run_folder", "check_not_past", "metrics_up_to", "flatten_optimizer", "unflatten_optimizer",
           "comparable", "batch_indices"]

CHECKPOINT_NAME = "checkpoint.safetensors"


def run_folder(out_dir: str | Path) -> Path:
    """Create the run folder ``out_dir`` if needed; return it as a path.

    Raises:
        ValueError: if ``out_dir``, or a folder above it, is an existing file.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        hint = f"its folder {out.parent}" if out.name == CHECKPOINT_NAME else "a folder (a new one, or a run folder to resume)"
        raise ValueError(f"the run folder {out} is an existing file; a run folder holds {CHECKPOINT_NAME}, samples.png "
                         f"and metrics.jsonl. Pass {hint} as --out.")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"cannot create the run folder {out}: {blocker} is an existing file, not a folder.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_not_past(path: Path, step: int, steps: int) -> None:
    """Refuse to resume a run that is already past the ``steps`` asked for (it would train nothing).

    Raises:
        ValueError: if ``step > steps``, saying how to train further.
    """
    if step > steps:
        raise ValueError(f"{path} is already at step {step}, past the {steps} steps asked for, so there is nothing to "
                         f"train. --steps is the run's total: pass --steps N with N > {step} to train further, or a new "
                         "--out folder for a shorter run.")


def metrics_up_to(path: Path, step: int) -> None:
    """Keep the records of the log ``path`` (JSON lines) up to ``step``: those written after the checkpoint go.

    A torn last line (a write cut short by a kill) is dropped with a warning naming the file. The
    log is rewritten atomically, and only if something changed.

    Raises:
        ValueError: for a line before the last that is not a JSON record with an integer ``"step"``,
            naming the file and the line.
    """
    if not path.exists():
        return
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    kept = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise ValueError('not an object with an integer "step"')
        except ValueError as err:
            if i == last:
                warnings.warn(f"{path}: dropped its last line, {len(line)} characters cut short (a write was "
                              f"interrupted): {line[:60]!r}", stacklevel=3)
                continue
            raise ValueError(f"{path}, line {i + 1}: not a metrics record ({err}): {line[:80]!r}. The log is corrupt "
                             f"there: fix or delete that line (or move {path.name} away to start a new log), then "
                             "resume again.") from None
        if rec["step"] <= step:
            kept.append(line)
    new = "".join(ln + "\n" for ln in kept)
    if new != text:
        write_atomic(path, new.encode())


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {f"optim.{i}.{k}": torch.as_tensor(v) for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    return {"state": state, "param_groups": groups}


def comparable(meta_train: dict) -> dict:
    return {k: v for k, v in meta_train.items() if k != "steps"}


@lru_cache(maxsize=2)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    # a pure function of (seed, epoch), so a resumed run draws the same order; cached so that a
    # training loop computes it once per epoch, not once per step
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))


def batch_indices(n: int, position: int, size: int, seed: int) -> torch.Tensor:
    """Indices of the batch that starts ``position`` images into the run (at most ``size``; it ends with the epoch)."""
    epoch, offset = divmod(position, n)
    return _epoch_permutation(n, seed, epoch)[offset : offset + size]
