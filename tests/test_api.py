"""The Python API mirrors the CLI: same options, same samples, same files, same errors."""

from __future__ import annotations

import json

import pytest

import arseq
from arseq.cli import main
from arseq.errors import DataError


def test_generate_from_python_equals_the_cli(trained, tmp_path, capsys):
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    model = arseq.load(ckpt)
    samples = model.generate(n=3, temperature=0.7, top_k=5, max_new_tokens=20, seed=4, out=tmp_path / "py")
    assert len(samples) == 3 and all(len(s.tokens) <= 20 for s in samples)
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                ckpt,
                "--num-samples",
                "3",
                "--temperature",
                "0.7",
                "--top-k",
                "5",
                "--max-new-tokens",
                "20",
                "--seed",
                "4",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    for i in range(3):
        name = f"sample_{i:03d}.txt"
        assert (tmp_path / "py" / name).read_text() == (tmp_path / "cli" / name).read_text()
    with pytest.raises(DataError, match="already exists"):
        model.generate(n=3, seed=4, out=tmp_path / "py")


def test_evaluate_and_score_from_python(trained, capsys):
    model = arseq.load(trained / "checkpoints" / "last.ckpt")
    report = model.evaluate()
    assert main(["evaluate", "--checkpoint", str(trained / "checkpoints" / "last.ckpt")]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert report["loss"] == pytest.approx(cli["loss"]) and report["items"] == cli["items"]
    tok = model.loaded.tokenizer
    good, shuffled = [tok.bos_id, *tok.encode("the cat sat on the mat.")], [tok.bos_id, *tok.encode("mat the. on cat sat the")]
    nll = model.score([good, shuffled])
    assert nll[0] < nll[1]  # the learned sentence is likelier than its words scrambled


def test_unknown_options_are_one_line(trained):
    model = arseq.load(trained / "checkpoints" / "last.ckpt")
    assert "temperature" in model.options() and "checkpoint" not in model.options()
    with pytest.raises(DataError, match="unknown option.*temprature"):
        model.generate(temprature=0.5)
    # generate's count is n: the command line's name is no option here (it was, and n=1 silently won)
    assert "n" in model.options() and "num_samples" not in model.options() and "num_samples" in model.options("evaluate")
    with pytest.raises(DataError, match=r"^unknown option\(s\) num_samples for generate; known: .*, n, "):
        model.generate(num_samples=3)


def test_same_seed_same_samples_at_any_batch_size(trained, capsys):
    model = arseq.load(trained / "checkpoints" / "last.ckpt")
    runs = [[s.tokens for s in model.generate(n=5, seed=11, max_new_tokens=16, batch_size=b)] for b in (1, 2, 5)]
    assert capsys.readouterr().out == ""  # the samples are returned, not printed (printing is the CLI's)
    assert runs[0] == runs[1] == runs[2]
    assert len({tuple(t) for t in runs[0]}) > 1  # and the samples differ from each other


def test_errors_name_the_python_options(trained, tmp_path):
    """Checks shared with the command line answer in the caller's names, and values of the wrong type or outside a
    choice say what the option takes."""
    model = arseq.load(trained)
    expected = {
        "n must be >= 1, got 0": dict(n=0),
        "batch_size must be an integer >= 1, got 0": dict(batch_size=0),
        "compile: expected one of off, on, auto or true or false, got 'maybe'": dict(compile="maybe"),
        "quantize: expected one of none, int8, got 'int4'": dict(quantize="int4"),
        "dtype: expected one of float32, bfloat16, float16, got 'f8'": dict(dtype="f8"),
        "out: expected a path, got '5'": dict(out=5),
        "top_p must be in (0, 1], got 1.5": dict(top_p=1.5),
    }
    for message, kwargs in expected.items():
        with pytest.raises(DataError) as e:
            model.generate(max_new_tokens=2, **kwargs)
        assert str(e.value) == message, kwargs
    with pytest.raises(DataError, match="^num_samples must be >= 0, got -2$"):
        model.evaluate(num_samples=-2)
    with pytest.raises(DataError, match="^data_paths: expected a path or a list of paths, got int$"):
        model.evaluate(data_paths=5)


def test_evaluate_takes_one_path_or_a_list(trained, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text("the cat sat on the mat. " * 20)
    model = arseq.load(trained)
    reports = [model.evaluate(data_paths=p) for p in (text, str(text), [text], [str(text)])]
    assert all(r["loss"] == reports[0]["loss"] and r["items"] == 1 for r in reports)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"^no usable item in data.paths \(.*empty.txt: empty file\)$"):
        model.evaluate(data_paths=tmp_path / "empty.txt")


def test_several_text_samples_in_one_file_keep_their_boundaries(trained, tmp_path):
    model = arseq.load(trained)
    tok = model.loaded.tokenizer
    samples = model.generate(n=3, max_new_tokens=40, seed=2, out=tmp_path / "all.txt")
    written = (tmp_path / "all.txt").read_text().split("----- sample ")[1:]
    assert [part.split(" -----\n", 1) for part in written] == [[str(i), tok.decode(s.tokens) + "\n"] for i, s in enumerate(samples)]
    one = model.generate(n=1, max_new_tokens=40, seed=2, out=tmp_path / "one.txt")
    assert (tmp_path / "one.txt").read_text() == tok.decode(one[0].tokens) + "\n"


def test_a_model_shows_itself_in_one_line(trained):
    model = arseq.load(trained / "checkpoints" / "last.ckpt")
    cfg, params = model.loaded.model.cfg, sum(p.numel() for p in model.loaded.model.parameters())
    assert repr(model) == (
        f"Model(text: {params / 1e6:.2f}M parameters, {cfg.n_layer} layers of width {cfg.d_model}, vocab {cfg.vocab_size}, context {cfg.max_seq_len})"
    )
