"""Shipped configs by name: `--config music/bach_chorales` (or the docs' configs/music/bach_chorales.yaml from any
folder) finds the config that ships with arseq, in a checkout and inside an installed wheel; `arseq configs`
lists and prints them; a name that is no shipped config is a one-line error, never a path arseq goes looking at."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from arseq.app.shipped_configs import find, summary, with_shipped
from arseq.cli import main
from arseq.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {f"{p.parent.name}/{p.stem}": p for p in sorted((ROOT / "configs").glob("*/*.yaml"))}


def test_names_resolve_in_every_spelling_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--config", "music/bach_chorales", "--config=configs/text/shakespeare_char_cpu_draft.yaml", "--config", "image/digits.yaml"]
    assert with_shipped(argv) == [
        "--config",
        str(SHIPPED["music/bach_chorales"]),
        f"--config={SHIPPED['text/shakespeare_char_cpu_draft']}",
        "--config",
        str(SHIPPED["image/digits"]),
    ]


def test_a_file_of_that_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "music").mkdir(parents=True)
    (tmp_path / "configs" / "music" / "bach_chorales.yaml").write_text("seed: 1\n")
    assert with_shipped(["--config", "configs/music/bach_chorales.yaml"]) == ["--config", "configs/music/bach_chorales.yaml"]


@pytest.mark.parametrize("name", ["nope.yaml", "music/../music/bach_chorales", "/etc/passwd.yaml", "music", "configs/music"])
def test_anything_else_is_no_config(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find(name) is None
    with pytest.raises(DataError, match=r"--config .*: no such file, nor a shipped config \(shipped: .*music/bach_chorales"):
        with_shipped(["--config", name])


def test_train_names_the_missing_config_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "bach.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--config bach.yaml: no such file, nor a shipped config" in err and "image/digits" in err


def test_prepare_by_name_reads_the_shipped_config(tmp_path, monkeypatch, capsys):
    """From a folder without configs/, the docs' command prepares the same data as the file's full path does."""
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "--config", "configs/image/digits.yaml"]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert main(["prepare", "--config", str(SHIPPED["image/digits"])]) == 0
    by_path = json.loads(capsys.readouterr().out)
    assert by_path.pop("cached") and not by_name.pop("cached")  # the same cache key: the same config and data
    assert by_name.pop("seconds") >= by_path.pop("seconds") and by_name == by_path and by_name["num_items"] == 1797


def test_configs_lists_each_with_what_it_trains(capsys):
    assert main(["configs"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in rows] == list(SHIPPED)
    assert all(len(row.split(None, 1)[1]) > 15 for row in rows)
    assert summary(SHIPPED["music/bach_chorales"]) == "Four-part Bach chorales on a laptop CPU"
    assert summary(SHIPPED["music/music21_composers"]).endswith("(on by default: the data has them)")  # a colon in brackets


def test_configs_prints_one_to_start_from(capsys):
    assert main(["configs", "protein/swissprot_small"]) == 0
    printed = capsys.readouterr().out
    assert printed == SHIPPED["protein/swissprot_small"].read_text() and yaml.safe_load(printed)["modality"]["name"] == "protein"
    assert main(["configs", "../pyproject.toml"]) == 2
    assert capsys.readouterr().err.strip() == "arseq configs: error: ../pyproject.toml: not a shipped config ('arseq configs' lists them)"


def test_the_wheel_carries_them_and_an_install_finds_them(tmp_path):
    """`pip install arseq` (no checkout beside it) lists the configs and reads one by name."""
    pytest.importorskip("setuptools")  # the build backend, not a dependency of arseq
    source = tmp_path / "source"
    for part in ("arseq", "configs"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)]
    subprocess.run(build, check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("arseq-*.whl")
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        assert {n for n in z.namelist() if n.startswith("arseq/configs/")} == {f"arseq/configs/{k}.yaml" for k in SHIPPED}
        z.extractall(installed)
    env = {**os.environ, "PYTHONPATH": str(installed)}
    listed = subprocess.run([sys.executable, "-m", "arseq", "configs"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert [row.split()[0] for row in listed.stdout.splitlines()] == list(SHIPPED)
    assert str(installed / "arseq" / "configs") in listed.stderr
