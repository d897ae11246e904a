"""The package's layers (../shared/ARCHITECTURE.md): every import of ddpm_lib by ddpm_lib goes down or stays level.

Read from the source with ``ast`` (imports inside functions included; those under ``if TYPE_CHECKING:`` are
annotations only and skipped), so a module cannot reach upward by importing late.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ddpm_lib"

# what each part of the package may import from the package (besides itself)
ALLOWED = {
    "core": set(),
    "devices": set(),
    "models": {"core"},
    "data": {"core"},
    "toys": {"core"},
    "checkpoint": {"core", "models"},
    "sampling": {"core", "models", "data", "devices"},
    "training": {"core", "models", "data", "devices", "checkpoint", "sampling", "toys"},
    "evaluation": {"core", "models", "data", "devices", "checkpoint", "sampling"},
    "teaching": {"core", "data"},
    "benchmark": {"core", "models", "data", "devices", "sampling", "training"},
    "__main__": {"core", "models", "data", "devices", "checkpoint", "sampling", "training", "evaluation", "benchmark"},
    "__init__": {"core"},
}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def _imported_parts(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_blocks(tree)
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for a top-level module, 1 inside a subpackage
    parts = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level > depth + 1:
                raise AssertionError(f"{path}: a relative import leaves the package")
            # what the import names, relative to the package root
            base = list(path.relative_to(PACKAGE).parts[: depth - node.level + 1])
            target = base + (node.module.split(".") if node.module else [])
            if target:
                parts.add(target[0])
            else:  # "from .. import x": x is a part of the package
                parts |= {alias.name for alias in node.names}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.startswith("ddpm_lib."):
                    parts.add(name.split(".")[1])
    return parts


def test_every_import_goes_down_or_stays_level():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = _part(path)
        assert part in ALLOWED, f"{path.relative_to(PACKAGE)} is in no layer of ALLOWED: place it"
        bad = _imported_parts(path) - ALLOWED[part] - {part}
        wrong += [f"{path.relative_to(PACKAGE)} imports {b}" for b in sorted(bad)]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_training_and_evaluation_do_not_import_each_other_and_the_hot_paths_skip_sympy():
    for part, other in (("training", "evaluation"), ("evaluation", "training")):
        assert other not in ALLOWED[part]
    for part in ("core", "models", "sampling", "training", "evaluation", "checkpoint", "data"):
        assert "teaching" not in ALLOWED[part]


def test_the_scan_sees_an_upward_import(tmp_path):
    # the check can fail: a core module importing sampling, late, inside a function, is found
    core = tmp_path / "ddpm_lib" / "core"
    core.mkdir(parents=True)
    bad = core / "bad.py"
    bad.write_text("def f():\n    from ..sampling.loop import sample\n    return sample\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "ddpm_lib"
    try:
        assert _imported_parts(bad) == {"sampling"}
        (core / "ok.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..checkpoint import X\nfrom .schedules import Schedule\n")
        assert _imported_parts(core / "ok.py") == {"core"}
    finally:
        PACKAGE = saved


def test_core_defines_no_network():
    # networks live in ddpm_lib.models; the core is their mathematics
    found = []
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any("Module" in ast.unparse(b) for b in node.bases):
                found.append(f"{path.name}: {node.name}")
    assert not found, found
