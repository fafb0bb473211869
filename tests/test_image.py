"""Image modality: patch tokenizer, codebook fit, conversions, bad files, constraint, completion, baselines."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from arseq.decode import generate
from arseq.modalities import DataError, EvalInputs, Example, Plan, Request, Sample, SamplingOptions, Skipped, resolve
from arseq.modalities.image import ImageGenerate, ImageModality
from arseq.modalities.image.metrics import baseline_bits
from arseq.models.transformer import Transformer, TransformerConfig
from arseq.tokenizers.patch import PatchTokenizer, kmeans, psnr, to_mode

DIGITS = [str(i) for i in range(10)]


def _args(prompt: str | None = None, out=None, n: int = 1, cond=(), labels=DIGITS, **options) -> Request:
    """A request as the core hands it to `plan`: `condition_values` holds the classes the model knows."""
    return Request(
        n, prompt, options=ImageGenerate(**options), out=out, conditions=list(cond), condition_values={"label": list(labels)} if labels else {}
    )


@pytest.fixture(scope="module")
def digits():
    m = ImageModality(mode="L", size=8, patch_size=1, codebook_size=32)
    tok = m.build_tokenizer([], "digits")
    return m, tok, list(m.read([], "digits", tok, check_roundtrip=True))


def test_registered():
    assert resolve("image") is ImageModality


def test_palette_mode_is_lossless_for_all_gray_levels():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    tok = PatchTokenizer.fit([pixels], size=16, patch_size=1, mode="L", codebook_size=256)
    assert tok.lossless and len(tok.codebook) == 256
    ids = tok.encode(pixels)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and len(ids) == 258
    assert np.array_equal(tok.decode_pixels(ids), pixels)
    assert psnr(np.asarray(tok.decode(ids))[..., None], pixels) == float("inf")


def test_digits_are_lossless_with_17_levels(digits):
    _, tok, examples = digits
    assert len(examples) == 1797 and all(isinstance(e, Example) for e in examples)
    assert len(tok.codebook) == 17 and tok.lossless and tok.labels == []  # the class is a condition, not a token
    assert all(e.exact for e in examples)
    assert all(len(e.tokens) == 66 for e in examples)  # BOS 64 codes EOS
    assert [e.conditions for e in examples[:3]] == [{"label": "0"}, {"label": "1"}, {"label": "2"}]
    assert {e.conditions["label"] for e in examples} == set(DIGITS)
    assert (
        tok.fit_stats["fit_images"] == 1797
        and tok.fit_stats["heldout_images"] == 179
        and tok.fit_stats["heldout_psnr_db"] is None
        and tok.fit_stats["heldout_exact"]
    )


def test_state_is_json_and_rebuilds_the_same_tokenizer(digits):
    m, tok, examples = digits
    again = m.load_tokenizer(json.loads(json.dumps(tok.to_dict())))
    assert again.vocab_size == tok.vocab_size and again.labels == tok.labels
    assert list(examples[5].tokens) == again.encode(tok.decode_pixels(examples[5].tokens))


def _blobs(seed: int, centres: np.ndarray, n: int = 4000) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    pick = rng.integers(len(centres), size=n)
    return torch.from_numpy((centres[pick] + rng.normal(0, 2, (n, centres.shape[1]))).astype(np.float32))


def test_kmeans_is_deterministic_and_finds_clusters():
    centres = np.random.default_rng(0).uniform(0, 255, (8, 12))
    x = _blobs(1, centres)
    a, b, c = kmeans(x, 8, seed=3), kmeans(x, 8, seed=3), kmeans(x, 8, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every true centre has a fitted centre within the noise
    d = torch.cdist(torch.from_numpy(centres).float(), a).min(1).values
    assert float(d.max()) < 3.0


def test_codebook_fit_is_seeded_and_bounded():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(40)]
    kw = dict(size=8, patch_size=2, mode="RGB", codebook_size=16)
    a, b = PatchTokenizer.fit(images, seed=1, **kw), PatchTokenizer.fit(images, seed=1, **kw)
    assert np.array_equal(a.codebook, b.codebook) and not a.lossless
    assert a.codebook.shape[1] == 12 and len(a.codebook) <= 16
    assert a.vocab_size == 3 + len(a.codebook)
    assert not np.array_equal(a.codebook, PatchTokenizer.fit(images, seed=2, **kw).codebook)


def test_patch_tokens_follow_raster_order():
    px = np.zeros((4, 4, 1), dtype=np.uint8)
    px[:2, 2:] = 255  # top-right patch bright
    tok = PatchTokenizer.fit([px], size=4, patch_size=2, mode="L", codebook_size=4)
    codes = tok.codes(px)
    assert codes.tolist() == [0, 1, 0, 0] and np.array_equal(tok.decode_pixels(tok.encode(px)), px)


@pytest.mark.parametrize(
    "make, mode, expected",
    [
        (lambda: Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "RGB", (255, 255, 255)),
        (lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 0)), "RGB", (255, 255, 255)),  # alpha on white
        (lambda: Image.new("LA", (4, 4), (0, 255)), "L", 0),
        (lambda: Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)), "L", 255),  # 16-bit scaled, not clipped
        (lambda: Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)), "L", 128),
        (lambda: Image.new("1", (4, 4), 1), "L", 255),
        (lambda: Image.new("F", (4, 4), 0.5), "L", 128),
        (lambda: Image.new("RGB", (4, 4), (255, 0, 0)).convert("P"), "RGB", (255, 0, 0)),
    ],
)
def test_modes_are_converted(make, mode, expected):
    im = to_mode(make(), mode)
    assert im.mode == mode and im.getpixel((1, 1)) == expected


def test_resize_and_crop_to_size():
    """The centre square is kept: a blue middle between red and green margins comes out blue, its edge
    columns (or rows) touched by the margins equally (bicubic reads a little past the crop)."""
    tok = PatchTokenizer([[0, 0, 0]], size=8, patch_size=1, mode="RGB")
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10], wide[:, 10:30], wide[:, 30:] = (255, 0, 0), (0, 0, 255), (0, 255, 0)
    for a in (wide, wide.transpose(1, 0, 2).copy()):
        p = tok.pixels(Image.fromarray(a))
        p = p if a is wide else p.transpose(1, 0, 2)
        assert p.shape == (8, 8, 3) and (p[:, 1:-1] == (0, 0, 255)).all()
        assert (p[:, 0, 2] > 200).all() and np.array_equal(p[:, 0, 0], p[:, -1, 1]) and not p[:, 0, 1].any()
    with pytest.raises(ValueError, match="smaller than one"):
        PatchTokenizer([[0] * 16], size=8, patch_size=4, mode="L").pixels(Image.new("L", (3, 30)))


def test_files_in_other_modes_are_converted(tmp_path):
    sixteen = _save(tmp_path / "16.png", Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)))
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0)).convert("P")
    clear.info["transparency"] = 0
    gif = _save(tmp_path / "clear.gif", clear)
    m = ImageModality(mode="L", size=8, codebook_size=256, conditional=False)
    tok = m.build_tokenizer([sixteen, gif], None)
    records = {e.name: tok.decode_pixels(e.tokens) for e in m.read([sixteen, gif], None, tok)}
    assert (records[str(sixteen)] == round(40000 / 257)).all()  # 16-bit scaled to 8 bits
    assert (records[str(gif)] == 255).all()  # transparent pixels composited onto white


def _save(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def test_folder_labels_and_bad_files_are_skipped_with_reasons(tmp_path):
    rng = np.random.default_rng(0)
    good = []
    for cls in ("cat", "dog"):
        for i in range(3):
            good.append(_save(tmp_path / cls / f"{i}.png", Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))))
    (tmp_path / "empty").mkdir()
    full = tmp_path / "dog" / "full.png"
    _save(full, Image.new("RGB", (64, 64), (1, 2, 3)))
    truncated = tmp_path / "dog" / "truncated.png"
    truncated.write_bytes(full.read_bytes()[:60])
    text = tmp_path / "cat" / "notes.jpg"
    text.write_text("not an image")
    tiny = _save(tmp_path / "cat" / "tiny.png", Image.new("RGB", (1, 1)))
    cmyk = _save(tmp_path / "cat" / "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 0, 0)))
    files = sorted([*good, full, truncated, text, tiny, cmyk])

    m = ImageModality(mode="RGB", size=8, patch_size=2, codebook_size=8)
    tok = m.build_tokenizer(files, None)
    assert tok.labels == []
    records = list(m.read(files, None, tok, check_roundtrip=True))
    skipped = {s.file: s.reason for s in records if isinstance(s, Skipped)}
    assert set(skipped) == {str(tmp_path / "empty"), str(truncated), str(text), str(tiny)}
    assert "empty class folder" in skipped[str(tmp_path / "empty")]
    assert "truncated or corrupt" in skipped[str(truncated)]
    assert "not an image" in skipped[str(text)]
    assert "smaller than one" in skipped[str(tiny)]
    examples = {e.name: e for e in records if isinstance(e, Example)}
    assert len(examples) == 8 and str(cmyk) in examples
    assert examples[str(full)].conditions == {"label": "dog"} and examples[str(cmyk)].conditions == {"label": "cat"}
    assert all(len(e.tokens) == 2 + 16 for e in examples.values())
    summary = m.summarize(tok, list(examples.values()))
    assert summary["labels"] == {"cat": 4, "dog": 4} and summary["tokens_per_image"] == 16


def test_no_usable_image_is_a_data_error(tmp_path):
    bad = tmp_path / "a.png"
    bad.write_bytes(b"\x89PNG junk")
    bomb = tmp_path / "bomb.png"
    Image.new("L", (200, 200)).save(bomb)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 200 * 200 // 3  # so that a small file is a "bomb" (pillow warns above it)
    try:
        with pytest.raises(DataError, match="no usable image among 2 files") as e:
            ImageModality(size=8).build_tokenizer([bad, bomb], None)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    assert "a.png: not an image" in str(e.value) and "bomb.png: too many pixels" in str(e.value)
    with pytest.raises(DataError, match="unknown image data.source"):
        ImageModality(size=8).build_tokenizer([], "cifar")


def _model(vocab: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=vocab, max_seq_len=80, n_layer=1, n_head=2, d_model=16))


def _sample(m, tok, args, n=4, seed=0):
    plan = m.plan(tok, replace(args, num_samples=n))
    cfg = SamplingOptions(seed=seed, max_new_tokens=plan.new_tokens).resolve(plan.sampling, (tok.eos_id,))
    prompts = plan.prompts
    gen = generate(_model(tok.vocab_size), prompts, cfg, constraint=plan.constraint())
    conditions = plan.conditions or [{}] * len(prompts)  # as the core gives each sample its plan's conditions
    return [Sample(p, t, s, 0.0, c) for p, t, s, c in zip(prompts, gen.tokens, gen.stopped, conditions)]


def test_constraint_makes_every_sample_a_full_image(digits):
    m, tok, _ = digits
    samples = _sample(m, tok, _args(), n=6)
    for s in samples:
        ids = np.asarray(s.prompt + s.tokens)
        assert s.stopped and int(tok.is_code(ids).sum()) == 64 and len(ids) == 65  # BOS codes (EOS stripped)


def test_label_flag_asks_the_core_for_the_label_condition(digits):
    m, tok, _ = digits
    assert m.plan(tok, _args(label="3", n=2)).conditions == [{"label": "3"}] * 2
    assert m.plan(tok, _args(label=1, labels=["a", "b", "c"])).conditions == [{"label": "b"}]  # an index when not a name
    assert m.plan(tok, _args(n=2)).conditions == [{}, {}]  # unconditional
    for args, why in (
        (_args(label="cat"), "unknown class label"),
        (_args(label="3", labels=()), "trained without class labels"),
        (_args(label="3", cond=["label=4"]), "give the class once"),
    ):
        with pytest.raises(DataError, match=why):
            m.plan(tok, args)


def test_a_model_from_before_conditions_keeps_its_label_token():
    """Checkpoints whose tokenizer holds the class labels still sample class-conditionally."""
    m = ImageModality(mode="L", size=8, patch_size=1, codebook_size=17)
    tok = PatchTokenizer.fit(
        list(np.random.default_rng(0).integers(0, 17, (4, 8, 8, 1), dtype=np.uint8)),
        size=8,
        patch_size=1,
        mode="L",
        codebook_size=17,
        labels=["cat", "dog"],
    )
    args = _args(label="dog", labels=())
    for s in _sample(m, tok, args, n=3):
        ids = np.asarray(s.prompt + s.tokens)
        assert tok.decode_label(s.prompt) == "dog" and int(tok.is_code(ids).sum()) == 64 and len(ids) == 66  # BOS label codes
    assert m.plan(tok, args).conditions is None


def test_completion_keeps_prompt_rows_pixel_exact_and_writes_side_by_side(digits, tmp_path):
    m, tok, examples = digits
    original = tok.decode_pixels(examples[11].tokens)
    prompt_png = tmp_path / "prompt.png"
    Image.fromarray(original[..., 0], "L").save(prompt_png)
    args = _args(prompt=str(prompt_png), prompt_rows=3)
    samples = _sample(m, tok, args, n=3)
    assert m.plan(tok, replace(args, num_samples=3)).conditions == [{"label": "0"}, {"label": "1"}, {"label": "2"}]  # classes cycle without --label
    assert m.plan(tok, _args(prompt=str(prompt_png), n=2, cond=["label=4"])).conditions == [{}, {}]  # --cond label=4 decides
    for s in samples:
        assert np.array_equal(tok.decode_pixels(s.prompt + s.tokens)[:3], original[:3])
    args = replace(args, num_samples=3, out=tmp_path / "out")
    written = m.write(tok, samples, args, m.plan(tok, args))
    names = [p.name for p in written]
    assert names == ["sample_000_0.png", "sample_001_1.png", "sample_002_2.png", "grid.png", "completion.png"]
    side = Image.open(tmp_path / "out" / "completion.png")
    assert side.size == (4 * 66 + 2, 66 + 2)  # original + 3 completions, 8x8 upscaled to 64 plus gaps
    assert np.array_equal(np.asarray(Image.open(written[0]))[..., None], tok.decode_pixels(samples[0].prompt + samples[0].tokens))
    with pytest.raises(DataError, match="between 0 and 8"):
        m.plan(tok, _args(prompt=str(prompt_png), prompt_rows=9))
    Image.fromarray(original[..., 0], "L").save(tmp_path / "grid.png")
    with pytest.raises(DataError, match="refusing to overwrite"):
        grid = _args(prompt=str(tmp_path / "grid.png"), out=tmp_path)
        m.write(tok, samples, grid, m.plan(tok, grid))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid.png")), original[..., 0])


def test_an_out_named_as_a_png_names_the_files(digits, tmp_path):
    m, tok, _ = digits
    args = _args(label="7")
    samples = _sample(m, tok, args, n=2)
    one = replace(args, num_samples=1, out=tmp_path / "seven.png")
    assert m.write(tok, samples[:1], one, m.plan(tok, one)) == [tmp_path / "seven.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "seven.png"))[..., None], tok.decode_pixels(samples[0].prompt + samples[0].tokens))
    two = replace(args, num_samples=2, out=tmp_path / "sevens.png")
    assert [p.name for p in m.write(tok, samples, two, m.plan(tok, two))] == ["sevens_000_7.png", "sevens_001_7.png", "sevens_grid.png"]
    for suffix, format in [(".jpg", "JPEG"), (".WEBP", "WEBP"), (".gif", "GIF"), (".tiff", "TIFF"), (".bmp", "BMP")]:
        named = replace(args, num_samples=2, out=tmp_path / f"x{suffix}")  # the format it names, not a folder x.jpg
        written = m.write(tok, samples, named, m.plan(tok, named))
        assert [p.name for p in written] == [f"x_000_7{suffix}", f"x_001_7{suffix}", f"x_grid{suffix}"]
        assert {Image.open(p).format for p in written} == {format}
    lossless = Image.open(tmp_path / "x_000_7.bmp")
    assert np.array_equal(np.asarray(lossless)[..., None], tok.decode_pixels(samples[0].prompt + samples[0].tokens))


def test_show_draws_ascii_and_prints_nothing(digits, capsys):
    m, tok, examples = digits
    out = m.show(tok, [Sample([1], list(examples[0].tokens[1:-1]), True, 0.5, {"label": "0"})], _args(), Plan([]))
    assert capsys.readouterr().out == ""  # the core prints it (the CLI), a modality never does
    assert "label 0" in out and "@" in out and len(out.splitlines()) >= 9


def test_baselines_match_the_issue_on_the_digits_split(digits):
    m, tok, examples = digits
    seqs = [np.asarray(e.tokens) for e in examples]
    val_idx = set(np.random.default_rng(1337).permutation(len(seqs))[:297].tolist())
    train = [s for i, s in enumerate(seqs) if i not in val_idx]
    val = [s for i, s in enumerate(seqs) if i in val_idx]
    item_nll = np.full(len(val), 64 * np.log(2.0))  # exactly 1 bit per dim
    report = EvalInputs(1.0, float(item_nll.sum()), 66 * len(val), item_nll, np.full(len(val), 66), train, val)
    result = m.evaluate(tok, report)
    assert result["bits_per_dim"] == pytest.approx(1.0)
    b = result["baselines"]
    assert b["uniform"] == pytest.approx(4.09, abs=0.005)
    assert b["per_position"] == pytest.approx(2.42, abs=0.005)
    assert b["previous_pixel"] == pytest.approx(2.29, abs=0.01)
    assert b["uniform"] > b["per_position"] > b["previous_pixel"]


def test_baselines_on_constant_images():
    train = np.zeros((50, 4), dtype=np.int64)
    b = baseline_bits(train, train[:5], 4)
    assert b["uniform"] == 8.0 and b["per_position"] == pytest.approx(4 * np.log2(54 / 51))


def test_metrics_have_the_same_keys_for_data_and_samples(digits):
    m, tok, examples = digits
    data = m.metrics(tok, [list(e.tokens) for e in examples[:50]])
    samples = m.metrics(tok, [s.prompt + s.tokens for s in _sample(m, tok, _args(), n=3)])
    assert set(data) >= {"complete_fraction", "mean_intensity", "foreground_fraction", "edge_strength", "distinct_fraction"}
    assert data["complete_fraction"] == samples["complete_fraction"] == 1.0
    assert 0.2 < data["mean_intensity"] < 0.45 and 0.2 < data["foreground_fraction"] < 0.45
    assert m.metrics(tok, [[1, 5, 6]])["complete_fraction"] == 0.0


def test_a_prompt_too_long_for_the_context_keeps_whole_patch_rows(digits, tmp_path):
    m, tok, examples = digits
    prompt_png = tmp_path / "prompt.png"
    Image.fromarray(tok.decode_pixels(examples[5].tokens)[..., 0], "L").save(prompt_png)
    full = m.plan(tok, _args(prompt=str(prompt_png), prompt_rows=tok.grid)).prompts[0]
    kept, what = m.fit_prompt(tok, full, 1 + 3 * tok.grid + 5)  # room for three rows and a bit
    assert kept == full[: 1 + 3 * tok.grid] and what == "its first 3 patch rows"
