"""Typed generation options: flags, YAML and Python fill the same dataclasses, and a value given wins."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from arseq.app import options
from arseq.app.argv import config_files, flag_values
from arseq.errors import DataError, option_names
from arseq.modalities import SamplingOptions
from arseq.modalities.music import MusicGenerate
from arseq.modalities.protein import ProteinGenerate


def test_argparse_spellings_become_jsonargparse_flags():
    kinds = options.kinds(ProteinGenerate)
    argv = [
        "--top-k=5",
        "--overwrite",
        "--data.paths",
        "a.fa",
        "b.fa",
        "--standard-only",
        "--max-length",
        "9",
        "--no-overwrite",
        "--cond",
        "tag=x",
        "--cond",
        "size=big",
    ]
    assert options.normalize(argv, kinds) == [
        "--top_k=5",
        "--overwrite",
        "true",
        "--standard_only",
        "true",
        "--max_length",
        "9",
        "--overwrite",
        "false",
        "--data.paths",
        '["a.fa", "b.fa"]',
        "--cond",
        '["tag=x", "size=big"]',
    ]


def test_given_values_beat_modality_defaults_which_beat_the_core():
    modality = {"temperature": 0.9, "top_p": 0.95}
    cfg = SamplingOptions(temperature=1.0, seed=3).resolve(modality, stop_tokens=(2,))
    assert (cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed, cfg.stop_tokens) == (1.0, 0.95, 256, 3, (2,))
    assert SamplingOptions().resolve({}, ()).temperature == 1.0
    with pytest.raises(ValueError, match="temperatur"):
        SamplingOptions().resolve({"temperatur": 1.0}, ())


def test_flags_yaml_and_python_give_the_same_call(tmp_path):
    p = options.parser("generate", MusicGenerate)
    flags = options.to_call(
        options.parse(p, ["--bars", "4", "--temperature", "0.7", "--num-samples", "3", "--out", "x"], options.kinds(MusicGenerate)), MusicGenerate
    )
    (tmp_path / "gen.yaml").write_text("bars: 4\ntemperature: 0.7\nnum_samples: 3\nout: x\n")
    yaml_call = options.to_call(options.parse(p, ["--config", str(tmp_path / "gen.yaml")], {}), MusicGenerate)
    python = options.from_python("generate", MusicGenerate, {"bars": 4, "temperature": 0.7, "n": 3, "out": "x"})  # generate(n=3)
    for call in (flags, yaml_call, python):
        assert call.request.options == MusicGenerate(bars=4) and call.request.sampling == SamplingOptions(temperature=0.7)
        assert call.request.num_samples == 3 and str(call.request.out) == "x" and call.run.batch_size == 16


def test_bad_values_and_names_are_one_line_errors():
    with pytest.raises(DataError, match="bars"):
        options.from_python("generate", MusicGenerate, {"bars": "many"})
    with pytest.raises(DataError, match="unknown option.*barz"):
        options.from_python("generate", MusicGenerate, {"barz": 4})
    p = options.parser("generate", MusicGenerate)
    with pytest.raises(DataError) as e:
        options.parse(p, ["--temperature", "hot"], options.kinds(MusicGenerate))
    assert "temperature" in str(e.value) and "\n" not in str(e.value)


def test_a_modality_option_may_not_shadow_the_cores():
    @dataclass
    class Clash:
        temperature: float = 1.0

    with pytest.raises(DataError, match="temperature"):
        options.parser("generate", Clash)


def test_early_keys_come_from_flags_or_the_config(tmp_path):
    (tmp_path / "g.yaml").write_text("checkpoint: runs/music\nbars: 2\n")
    assert options.early(["--config", str(tmp_path / "g.yaml")])["checkpoint"] == "runs/music"
    got = options.early(["--config", str(tmp_path / "g.yaml"), "--checkpoint=other", "--trust-modality-import", "-h"])
    assert got["checkpoint"] == "other" and got["trust_modality_import"] is True and got["help"]
    (tmp_path / "h.yaml").write_text("checkpoint: runs/text\n")
    both = ["--config=" + str(tmp_path / "g.yaml"), "--config", str(tmp_path / "h.yaml")]
    assert options.early(both)["checkpoint"] == "runs/text"  # the later file wins, as in jsonargparse


def test_flag_values_read_both_spellings_in_order():
    argv = ["--config=a.yaml", "--top-k", "5", "--config", "b.yaml", "--config="]
    assert flag_values(argv, "--config") == ["a.yaml", "b.yaml", ""]
    assert config_files(argv) == ["a.yaml", "b.yaml"]
    assert flag_values(argv, "--top_k", "--top-k") == ["5"] and flag_values(["--top-k"], "--top-k") == []


def test_flags_in_messages_become_option_names():
    """The Python API and the server pass the command line's messages on in their own names."""
    assert option_names("--prompt-bars needs --prompt FILE") == "prompt_bars needs prompt"
    assert option_names("--prompt-bars needs --prompt FILE", {"prompt": "prompt_file"}) == "prompt_bars needs prompt_file"
    assert option_names("--num-samples must be >= 1; see --data.paths") == "num_samples must be >= 1; see data.paths"
    assert option_names("--cond FIELD=VALUE: unknown; /tmp/a--b kept") == "cond FIELD=VALUE: unknown; /tmp/a--b kept"
