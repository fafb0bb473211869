"""The web page in a real browser: Playwright driving the system's Chromium (never `playwright install`).

Music: choose a key and a meter, generate, and the audio element holds a playable WAV as long as the piece,
the piano roll loads, a download gives the file's bytes. Images: a digit's grid. Proteins: the design table.
Skipped when playwright or a Chromium is missing; `.ci/run` installs Debian's `chromium`. With
ARSEQ_SCREENSHOTS=DIR, each page's screenshot is also saved there (docs/ holds the ones taken so).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

from serving import Served, tiny_model  # noqa: E402

BROWSER = os.environ.get("ARSEQ_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium found (apt-get install chromium, or set ARSEQ_CHROMIUM)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=BROWSER, args=["--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []  # a script's exception, or a request that failed (the favicon's 404 was one)
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == []


def generate(page, served, timeout=60_000):
    """Click Generate; return the /v1/generate result the page received."""
    with page.expect_response(lambda r: r.url.endswith("/v1/generate"), timeout=timeout) as info:
        page.click("#generate")
    page.wait_for_selector("#results .card", timeout=timeout)
    body = info.value.text()
    results = [json.loads(block.split("data: ", 1)[1]) for block in body.split("\n\n") if block.startswith("event: result")]
    assert len(results) == 1, body[-500:]
    return results[0]


def screenshot(page, tmp_path, name):
    path = tmp_path / f"serving-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("ARSEQ_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["ARSEQ_SCREENSHOTS"]) / path.name)


def check_download(page, file):
    with page.expect_download() as info:
        page.click(f"a[download='{file['name']}']")
    assert Path(info.value.path()).read_bytes() == base64.b64decode(file["data"])


def test_music_page_plays_the_piece(page, tmp_path_factory, tmp_path):
    from arseq.modalities.music.audio import duration_seconds

    s = Served(tiny_model("music", tmp_path_factory), process=True)  # as `arseq serve` runs it
    try:
        page.goto(f"http://127.0.0.1:{s.port}/")
        page.wait_for_selector("#cond-key option:nth-child(2)", state="attached")
        key = page.locator("#cond-key option").nth(1).get_attribute("value")
        meter = page.locator("#cond-meter option").nth(1).get_attribute("value")
        page.select_option("#cond-key", key)
        page.select_option("#cond-meter", meter)
        page.fill("#num_samples", "2")
        page.fill("#opt-bars", "2")
        page.fill("#opt-seed", "1")
        page.fill("#opt-max_new_tokens", "120")
        result = generate(page, s)
        tok = s.loaded.tokenizer
        for i, sample in enumerate(result["samples"]):
            want = duration_seconds(tok.decode_events(sample["prompt_tokens"] + sample["tokens"]), tok.ppq)
            audio = page.locator(f".sample[data-sample='{i}'] audio")
            audio.evaluate("a => a.readyState >= 1 || new Promise(r => a.addEventListener('loadedmetadata', r))")
            assert abs(audio.evaluate("a => a.duration") - want) < 0.01 and audio.evaluate("a => a.error") is None
            roll = page.locator(f".sample[data-sample='{i}'] img")
            assert roll.evaluate("img => img.complete && img.naturalWidth") > 0
        assert page.locator(".sample").count() == 2
        played = page.locator(".sample[data-sample='0'] audio").evaluate(
            "a => a.play().then(() => new Promise(r => setTimeout(r, 300))).then(() => a.currentTime)"
        )
        assert played > 0
        for name in ("sample_000.mid", "sample_000.wav", "sample_000.musicxml"):
            check_download(page, next(f for f in result["files"] if f["name"] == name))
        screenshot(page, tmp_path, "music")
    finally:
        s.stop()


def test_music_page_continues_an_uploaded_midi_file(page, tmp_path_factory, tmp_path):
    from music21 import converter

    from arseq.modalities.music.corpus import bach_chorales

    chorale = tmp_path / "chorale.mid"
    converter.parse(bach_chorales()[0][1]).write("midi", fp=str(chorale))
    s = Served(tiny_model("music", tmp_path_factory))
    try:
        page.goto(f"http://127.0.0.1:{s.port}/")
        page.wait_for_selector("#opt-prompt_bars", state="attached")
        assert page.is_visible("#prompt-file") and ".mid" in page.get_attribute("#prompt-file", "accept").split(",")
        assert page.inner_text("#file-legend") == "Continue a piece"
        page.set_input_files("#prompt-file", str(chorale))
        page.fill("#opt-prompt_bars", "2")
        page.fill("#num_samples", "2")
        page.fill("#opt-seed", "3")
        page.fill("#opt-max_new_tokens", "60")
        result = generate(page, s)
        same = s.post(
            "/v1/generate",
            {
                "num_samples": 2,
                "prompt_bars": 2,
                "seed": 3,
                "max_new_tokens": 60,
                "prompt_file": {"name": "c.mid", "data": base64.b64encode(chorale.read_bytes()).decode()},
            },
        )[1]
        assert [x["tokens"] for x in result["samples"]] == [x["tokens"] for x in same["samples"]]
        assert result["samples"][0]["prompt_tokens"].count(s.loaded.tokenizer.bar_id) == 3  # the file's first two bars
        assert page.locator(".sample audio").count() == 2
        page.click("#clear-file")
        assert page.evaluate("document.getElementById('prompt-file').files.length") == 0
    finally:
        s.stop()


def test_image_page_shows_the_grid(page, tmp_path_factory, tmp_path):
    s = Served(tiny_model("image", tmp_path_factory))
    try:
        page.goto(f"http://127.0.0.1:{s.port}/")
        page.wait_for_selector("#cond-label option:nth-child(2)", state="attached")
        page.select_option("#cond-label", "3")
        page.fill("#num_samples", "9")
        result = generate(page, s)
        assert page.locator("#grid").evaluate("img => img.complete && img.naturalWidth") > 0
        assert sum(f["name"].endswith("_3.png") for f in result["files"]) == 9
        check_download(page, next(f for f in result["files"] if f["name"] == "grid.png"))
        screenshot(page, tmp_path, "image")
    finally:
        s.stop()


def test_protein_page_shows_the_designs(page, tmp_path_factory, tmp_path):
    s = Served(tiny_model("protein", tmp_path_factory))
    try:
        page.goto(f"http://127.0.0.1:{s.port}/")
        page.wait_for_selector("#cond-tag option:nth-child(2)", state="attached")
        page.select_option("#cond-tag", "polyW")
        page.fill("#prompt", "MK")
        page.fill("#num_samples", "5")
        page.fill("#opt-max_length", "24")
        result = generate(page, s)
        rows = page.locator("#designs tr")
        assert rows.count() == 6 and all(t.startswith("MK") for t in page.locator("#designs td.seq").all_inner_texts())
        check_download(page, next(f for f in result["files"] if f["name"] == "designs.fasta"))
        screenshot(page, tmp_path, "protein")
    finally:
        s.stop()


def test_text_page_streams(page, trained, tmp_path):
    s = Served(trained / "checkpoints" / "last.ckpt")
    try:
        page.goto(f"http://127.0.0.1:{s.port}/")
        page.wait_for_selector("#opt-temperature", state="attached")
        assert page.is_hidden("#file-box")  # a text model reads no prompt file
        page.fill("#prompt", "the cat")
        page.fill("#num_samples", "2")
        page.fill("#opt-max_new_tokens", "60")
        result = generate(page, s)
        texts = page.locator(".sample pre").all_inner_texts()
        assert texts == [base64.b64decode(f["data"]).decode() for f in result["files"]]
        screenshot(page, tmp_path, "text")
    finally:
        s.stop()


def test_a_server_of_two_models_has_a_picker_that_switches_the_form(page, trained, tmp_path_factory):
    s = Served({"words": trained / "checkpoints" / "last.ckpt", "digits": tiny_model("image", tmp_path_factory)})
    try:
        page.goto(f"http://127.0.0.1:{s.port}/")
        page.wait_for_selector("#opt-temperature", state="attached")
        assert page.is_visible("#model-picker") and page.locator("#model-picker option").all_inner_texts() == ["words", "digits"]
        assert page.is_visible("#prompt") and page.locator("#cond-label").count() == 0
        page.select_option("#model-picker", "digits")
        page.wait_for_selector("#cond-label option:nth-child(2)", state="attached")
        assert not page.is_visible("#prompt") and page.locator("#opt-temperature").count() == 1  # the form built once
        page.select_option("#cond-label", "5")
        page.fill("#num_samples", "2")
        result = generate(page, s)
        assert result["model"] == "digits" and sum(f["name"].endswith("_5.png") for f in result["files"]) == 2
        page.select_option("#model-picker", "words")
        page.wait_for_selector("#prompt", state="visible")
        assert page.locator("#cond-label").count() == 0 and page.locator("#results .card").count() == 0
    finally:
        s.stop()


def test_one_model_has_no_picker(page, trained):
    s = Served(trained / "checkpoints" / "last.ckpt")
    try:
        page.goto(f"http://127.0.0.1:{s.port}/")
        page.wait_for_selector("#opt-temperature", state="attached")
        assert not page.is_visible("#model-picker") and not page.is_visible("#model-pick")
    finally:
        s.stop()
