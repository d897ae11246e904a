"""Point the book at its repository: one command changes the URL everywhere it is used.

The URL's one home is ``repository.url`` in ``_config.yml`` (the Colab and repository buttons of the
HTML book). Copies of it that cannot read that file are kept equal to it by this script and held to it
by tests: the Colab install cell of every chapter (``pip install "ddpm_lib[book] @ git+URL"``),
``CITATION.cff`` and pyproject's ``[project.urls]``.

Usage: ``python scripts/set_repository_url.py https://github.com/OWNER/REPO``

Raises SystemExit with a message for a URL that is not ``https://github.com/OWNER/REPO`` (the Colab
launch button supports GitHub only).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GITHUB = re.compile(r"https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


def current_url() -> str:
    """The repository URL in ``_config.yml``."""
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def files_holding_the_url() -> list[Path]:
    """Every file that carries a copy of the URL."""
    return [ROOT / "_config.yml", ROOT / "CITATION.cff", ROOT / "pyproject.toml", *sorted((ROOT / "notebooks").glob("*.ipynb"))]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not GITHUB.fullmatch(argv[0].rstrip("/")):
        raise SystemExit("usage: python scripts/set_repository_url.py https://github.com/OWNER/REPO "
                         "(a GitHub repository: the Colab button opens notebooks from GitHub)")
    old, new = current_url(), argv[0].rstrip("/")
    for path in files_holding_the_url():
        text = path.read_text()
        if old not in text:
            raise SystemExit(f"{path.relative_to(ROOT)} does not hold the current URL {old}: fix it by hand first.")
        path.write_text(text.replace(old, new))
        print(f"{path.relative_to(ROOT)}: {old} -> {new}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
