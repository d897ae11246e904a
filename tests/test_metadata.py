"""What a public book's readers expect beside it: a LICENSE and a CITATION.cff that agree with the package."""

import tomllib
from pathlib import Path

import yaml

import ddpm_lib

ROOT = Path(__file__).resolve().parents[1]


def test_license_and_citation_agree_with_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert (ROOT / "LICENSE").read_text().startswith(f"{project['license']['text']} License\n")
    assert citation["license"] == project["license"]["text"]
    assert citation["version"] == project["version"] == ddpm_lib.__version__
    assert citation["cff-version"] == "1.2.0" and citation["authors"] and citation["title"]
    book = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert citation["repository-code"] == book["repository"]["url"]
