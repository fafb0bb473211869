"""Every config under configs/ (and each draft overlay on its main config) parses as `arseq train` reads it,
and the objects it names (trainer callbacks) can be built: a shipped config never fails on a key."""

from pathlib import Path

import pytest
import yaml

from arseq.app.train_verb import instantiate
from arseq.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MAIN = sorted(p for p in CONFIGS.glob("*/*.yaml") if not p.stem.endswith("_draft"))
DRAFTS = sorted(CONFIGS.glob("*/*_draft.yaml"))


def test_every_folder_has_configs():
    assert {p.parent.name for p in MAIN} == {"image", "music", "protein", "text"} and len(DRAFTS) == 3


@pytest.mark.parametrize(
    "stack", [[p] for p in MAIN] + [[p.with_name(p.name.replace("_draft", "")), p] for p in DRAFTS], ids=lambda stack: "+".join(p.stem for p in stack)
)
def test_config_parses_and_its_callbacks_build(stack, capsys):
    argv = ["train"] + [arg for p in stack for arg in ("--config", str(p))] + ["--print_config"]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert stopped.value.code in (0, None) and printed["trainer"]["max_steps"] >= 1
    for spec in printed["trainer"].get("callbacks") or []:
        assert not isinstance(instantiate(spec), dict)
