"""A prompt file uploaded to `/v1/generate` (`prompt_file`): a MIDI piece continued (`prompt_bars`) or infilled
(`keep_bars`, a FIM model), an image completed (`prompt_rows`), each equal to `arseq generate --prompt FILE`
with the same seed; hostile uploads are one-line 4xx naming `prompt_file`; the temporary folders are gone after."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import tempfile

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from hostile_files import midi_gap  # noqa: E402
from serving import Served, tiny_model, train_tiny  # noqa: E402
from test_serve import cli_files, served_files  # noqa: E402


@pytest.fixture(scope="module")
def tmpdir_watched(tmp_path_factory):
    """A folder as this process's and its engine processes' temporary folder, to check nothing is left in it."""
    folder = tmp_path_factory.mktemp("tmpdir")
    saved, env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(folder), str(folder)
    yield folder
    tempfile.tempdir = saved
    if env is None:
        os.environ.pop("TMPDIR")
    else:
        os.environ["TMPDIR"] = env


def left_over(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("arseq-"))


@pytest.fixture(scope="module")
def chorale(tmp_path_factory):
    """A Bach chorale from music21's corpus written as a MIDI file."""
    from music21 import converter

    from arseq.modalities.music.corpus import bach_chorales

    path = tmp_path_factory.mktemp("prompt") / "chorale.mid"
    converter.parse(bach_chorales()[0][1]).write("midi", fp=str(path))
    return path


@pytest.fixture(scope="module")
def music(tmp_path_factory, tmpdir_watched):
    s = Served(tiny_model("music", tmp_path_factory))
    yield s
    s.stop()


def upload(path_or_bytes, name=None):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return {"name": name or path_or_bytes.name, "data": base64.b64encode(data).decode()}


def test_midi_prompt_with_prompt_bars_equals_generate(tmp_path_factory, tmp_path, chorale, tmpdir_watched):
    ckpt = tiny_model("music", tmp_path_factory)
    s = Served(ckpt, process=True)  # as `arseq serve` runs it: planned in the server's process and the engine's
    try:
        info = json.loads(s.get("/v1/model")[1])
        assert ".mid" in info["prompt_file"] and ".musicxml" in info["prompt_file"]
        body = {"num_samples": 2, "max_new_tokens": 60, "prompt_bars": 2, "seed": 5, "prompt_file": upload(chorale, "my piece.MID")}
        status, out = s.post("/v1/generate", body)
        assert status == 200, out
        cli = cli_files(tmp_path, ckpt, "--prompt", chorale, "--prompt-bars", 2, "--num-samples", 2, "--max-new-tokens", 60, "--seed", 5)
        files = served_files(out)
        assert all(files[n] == cli[n] for n in cli if n.endswith((".mid", ".png")))
        tok = s.loaded.tokenizer
        prompt = out["samples"][0]["prompt_tokens"]
        assert prompt[-1] == tok.bar_id and prompt.count(tok.bar_id) == 3 and len(prompt) > 20  # two bars of the chorale
    finally:
        s.stop()
    assert left_over(tmpdir_watched) == []


def test_options_of_a_prompt_file_without_one_are_refused_as_the_cli_does(music, tmp_path_factory):
    status, out = music.post("/v1/generate", {"prompt_bars": 2})
    assert status == 422 and out["error"]["field"] == "prompt_bars" and out["error"]["message"] == "prompt_bars needs prompt_file"
    status, out = music.post("/v1/generate", {"keep_bars": "1-2"})  # a model without FIM: refused for that first
    assert status == 422 and out["error"]["field"] == "keep_bars"
    image = Served(tiny_model("image", tmp_path_factory))
    try:
        status, out = image.post("/v1/generate", {"prompt_rows": 2})
        assert status == 422 and out["error"]["field"] == "prompt_rows" and out["error"]["message"] == "prompt_rows needs prompt_file"
    finally:
        image.stop()


def absurd_tracks(chorale):
    good = chorale.read_bytes()
    return b"MThd" + struct.pack(">IHHH", 6, 1, 30000, 480) + good[14:]


HOSTILE = {
    "zero bytes": lambda c, t: upload(b"", "a.mid"),
    "truncated MIDI": lambda c, t: upload(c.read_bytes()[:40], "a.mid"),
    "random bytes named .mid": lambda c, t: upload(np.random.default_rng(0).bytes(2000), "a.mid"),
    "absurd track count": lambda c, t: upload(absurd_tracks(c), "a.mid"),
    "absurd note length": lambda c, t: upload(midi_gap(t / "gap.mid", 2**27), "a.mid"),
    "no suffix": lambda c, t: upload(c, "/etc/passwd"),
    "a suffix music does not read": lambda c, t: upload(c, "piece.png"),
    "bad base64": lambda c, t: {"name": "a.mid", "data": "not base64!"},
    "not an object": lambda c, t: "piece.mid",
    "a path instead of data": lambda c, t: {"name": "a.mid", "path": "/etc/passwd"},
    "garbage MusicXML": lambda c, t: upload(b"<score-partwise><part id='P1'><measure>", "a.musicxml"),
    "ABC, read from files only": lambda c, t: upload(b"X:1\nK:C\nCDEF|", "tune.abc"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_uploads_get_one_line_4xx_naming_prompt_file(music, chorale, tmp_path, tmpdir_watched, case):
    status, out = music.post("/v1/generate", {"max_new_tokens": 8, "seed": 0, "prompt_file": HOSTILE[case](chorale, tmp_path)})
    assert 400 <= status < 500 and out["error"]["field"] == "prompt_file", out
    message = out["error"]["message"]
    assert "\n" not in message and message.startswith("prompt_file") and str(tmpdir_watched) not in message
    assert left_over(tmpdir_watched) == []
    assert music.post("/v1/generate", {"max_new_tokens": 4, "seed": 0})[0] == 200  # the server goes on


def test_a_name_is_only_its_suffix(music, chorale, tmpdir_watched, tmp_path):
    """A name with directory parts is read by its suffix alone: nothing is written where it points."""
    target = tmp_path / "escaped.mid"
    name = "../" * 12 + str(target).lstrip("/")
    status, out = music.post("/v1/generate", {"max_new_tokens": 8, "prompt_bars": 1, "seed": 0, "prompt_file": upload(chorale, name)})
    assert status == 200, out
    assert not target.exists() and left_over(tmpdir_watched) == []


def test_prompt_file_with_a_prompt_or_on_a_text_model_is_refused(music, chorale, trained):
    for prompt in ([1, 2], "abc"):
        status, out = music.post("/v1/generate", {"prompt": prompt, "prompt_file": upload(chorale)})
        assert status == 400 and out["error"]["field"] == "prompt_file"
    status, out = music.post("/v1/completions", {"prompt_file": upload(chorale)})  # arseq's endpoint only
    assert status == 400 and out["error"]["field"] == "prompt_file"
    status, out = music.post("/v1/generate", {"prompt": "abc"})
    assert status == 422 and "prompt_file" in out["error"]["message"]
    text = Served(trained / "checkpoints" / "last.ckpt")
    try:
        assert json.loads(text.get("/v1/model")[1])["prompt_file"] is None
        status, out = text.post("/v1/generate", {"prompt_file": upload(b"hello", "a.txt")})
        assert status == 422 and out["error"]["field"] == "prompt_file" and "reads no prompt file" in out["error"]["message"]
    finally:
        text.stop()


def test_image_prompt_with_prompt_rows_keeps_its_top_rows(tmp_path_factory, tmp_path, tmpdir_watched):
    from PIL import Image

    ckpt = tiny_model("image", tmp_path_factory)
    prompt = tmp_path / "digit.png"
    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8), "L").save(prompt)
    s = Served(ckpt)
    try:
        body = {"num_samples": 2, "prompt_rows": 3, "label": "4", "seed": 1, "prompt_file": upload(prompt, "digit.png")}
        status, out = s.post("/v1/generate", body)
        assert status == 200, out
        files = served_files(out)
        assert files == cli_files(tmp_path, ckpt, "--prompt", prompt, "--prompt-rows", 3, "--label", 4, "--num-samples", 2, "--seed", 1)
        tok = s.loaded.tokenizer
        kept = tok.decode_pixels(tok.encode(Image.open(prompt)))[:3, :, 0]  # the prompt's top rows as the codebook has them
        for name in ("sample_000_4.png", "sample_001_4.png"):
            assert (np.asarray(Image.open(io.BytesIO(files[name])))[:3] == kept).all()
        status, out = s.post("/v1/generate", {"prompt_rows": 3, "prompt_file": upload(b"\x89PNG\r\n\x1a\nnot really", "x.png")})
        assert status == 422 and out["error"]["field"] == "prompt_file" and out["error"]["message"].startswith("prompt_file: ")
    finally:
        s.stop()
    assert left_over(tmpdir_watched) == []


def test_keep_bars_with_a_fim_model_equals_generate(tmp_path_factory, tmp_path, chorale, tmpdir_watched):
    """The regenerated piece is written after planning, when the uploaded file is gone: the plan holds the piece."""
    ckpt = train_tiny("music", tmp_path_factory.mktemp("fim"), settings={"fim_rate": 0.5, "block_size": 256})
    s = Served(ckpt)
    try:
        from arseq.modalities.music.reading import read_events

        keep = f"1-2,4-{len(read_events(s.loaded.tokenizer, chorale).bars)}"
        body = {"num_samples": 2, "keep_bars": keep, "seed": 2, "prompt_file": upload(chorale)}
        status, out = s.post("/v1/generate", body)
        assert status == 200, out
        cli = cli_files(tmp_path, ckpt, "--prompt", chorale, "--keep-bars", keep, "--num-samples", 2, "--seed", 2)
        files = served_files(out)
        assert [s["tokens"] for s in out["samples"]] and all(files[n] == cli[n] for n in cli if n.endswith((".mid", ".png")))
    finally:
        s.stop()
    assert left_over(tmpdir_watched) == []
