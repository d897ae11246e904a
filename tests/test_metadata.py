"""What a public book's readers expect beside it: a LICENSE and a CITATION.cff that agree with the package."""

import tomllib
from pathlib import Path

import pytest
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
    assert project["urls"]["Repository"] == book["repository"]["url"]


def test_set_repository_url_changes_every_copy(tmp_path, monkeypatch):
    # the script rewrites every copy of the URL; run it on a copy of the files it touches
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("set_repository_url", ROOT / "scripts" / "set_repository_url.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "notebooks").mkdir()
    for path in script.files_holding_the_url():
        shutil.copy(path, tmp_path / path.relative_to(ROOT))
    monkeypatch.setattr(script, "ROOT", tmp_path)
    old = script.current_url()
    assert script.main(["https://github.com/someone/fork"]) == 0
    for path in script.files_holding_the_url():
        text = path.read_text()
        assert old not in text and "https://github.com/someone/fork" in text, path.name
    assert script.current_url() == "https://github.com/someone/fork"
    with pytest.raises(SystemExit, match="a GitHub repository"):
        script.main(["https://gitlab.com/someone/fork"])
