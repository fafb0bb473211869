"""Music modality: reading (bad files skipped with reasons), augmentation, prompts, constraint, writing, metrics."""

from __future__ import annotations

import struct
from pathlib import Path

import music21  # noqa: F401  (a hard dependency: a broken install must fail, not skip)
import numpy as np
import pytest
from music21 import converter, stream  # noqa: E402

from arseq.modalities import DataError, EvalInputs, Example, Plan, Request, Sample, SamplingOptions, Skipped, resolve  # noqa: E402
from arseq.modalities.music import MusicGenerate
from arseq.modalities.music.corpus import bach_chorales  # noqa: E402
from arseq.modalities.music.grammar import GrammarConstraint  # noqa: E402
from arseq.modalities.music.reading import prompt_tokens  # noqa: E402
from arseq.modalities.music.render import PART_COLOURS
from arseq.tokenizers.score import DUR, PART, PITCH  # noqa: E402

MUSIC = resolve("music")


def smf(notes: list[tuple[int, int, int]], channel: int = 0, us_per_quarter: int = 500_000) -> bytes:
    """A type-0 standard MIDI file: (start tick, length in ticks, pitch) at 480 ticks per quarter."""
    events = [(0, bytes([0xFF, 0x51, 3]) + us_per_quarter.to_bytes(3, "big"))]
    for start, length, pitch in notes:
        events += [(start, bytes([0x90 | channel, pitch, 80])), (start + length, bytes([0x80 | channel, pitch, 0]))]
    track, now = b"", 0
    for tick, data in sorted(events, key=lambda e: e[0]):
        delta, now = tick - now, tick
        vlq = [delta & 0x7F]
        while delta := delta >> 7:
            vlq.append((delta & 0x7F) | 0x80)
        track += bytes(reversed(vlq)) + data
    track += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(track)) + track


@pytest.fixture(scope="module")
def chorales() -> list[tuple[str, str]]:
    return bach_chorales()


def test_bach_chorales_are_the_350_distinct_scores(chorales):
    assert len(chorales) == 350 and len({n for n, _ in chorales}) == 350
    assert all(Path(p).is_file() and Path(p).suffix in (".mxl", ".xml", ".krn") for _, p in chorales)
    assert dict(chorales)["bach/bwv281"].endswith("bwv281.mxl")


def test_the_chorales_keep_their_four_voices(chorales, monkeypatch):
    """bwv248.42-4 puts eight instruments among its voices (horns and oboes first): read as a chorale, it is
    its soprano, alto, tenor and bass alone, in that order; a four-part chorale reads as it is."""
    from arseq.modalities.music import modality
    from arseq.modalities.music.reading import read_events

    tok, paths = MUSIC().tokenizer, dict(chorales)
    big, four = Path(paths["bach/bwv248.42-4"]), Path(paths["bach/bwv281"])
    names = [p.partName for p in converter.parse(big).parts]
    whole = read_events(tok, big)
    assert whole.num_parts == 12 and names.index("Soprano") > 0
    monkeypatch.setitem(modality.SOURCES, "bach_chorales", lambda: [("big", str(big)), ("four", str(four))])
    read = {e.name: tok.decode_events(e.tokens.tolist()) for e in MUSIC().read([], "bach_chorales", tok)}
    assert read["big"].num_parts == 4

    def notes(ev, part):
        return sorted((n.onset, n.pitch, n.dur) for n in ev.notes if n.part == part)

    for i, voice in enumerate(("Soprano", "Alto", "Tenor", "Bass")):
        assert notes(read["big"], i) == notes(whole, names.index(voice))
    alone = read_events(tok, four)
    assert alone.num_parts == read["four"].num_parts == 4
    assert all(notes(read["four"], i) == notes(alone, i) for i in range(4))


def test_bad_files_are_skipped_with_reasons(tmp_path, chorales):
    scale = smf([(i * 480, 480, 60 + i) for i in range(8)])
    files = {
        "good.mid": scale,
        "truncated.mid": scale[:40],
        "garbage.mid": b"this is not a MIDI file at all" * 3,
        "empty.mid": smf([]),
        "drums.mid": smf([(i * 240, 240, 36 + i % 4) for i in range(16)], channel=9),
        "fast.mid": smf([(i * 480, 480, 60) for i in range(4)], us_per_quarter=10_000),
        "notes.txt": b"C D E",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    crowd = stream.Score([converter.parse("tinyNotation: 4/4 c4 d e f") for _ in range(20)])
    crowd.write("musicxml", fp=str(tmp_path / "crowd.musicxml"))
    paths = sorted(tmp_path.iterdir()) + [Path(chorales[0][1])]
    m = MUSIC(workers=2)
    tok = m.build_tokenizer(paths, None)
    out = list(m.read(paths, None, tok, check_roundtrip=True))
    skipped = {Path(s.file).name: s.reason for s in out if isinstance(s, Skipped)}
    examples = [e for e in out if isinstance(e, Example)]
    assert [Path(e.name).name for e in examples] == ["good.mid", Path(chorales[0][1]).name]
    assert all(e.exact for e in examples)
    expected = {
        "truncated.mid": "truncated MIDI",
        "garbage.mid": "not a MIDI file",
        "empty.mid": "empty score",
        "drums.mid": "percussion only",
        "fast.mid": "absurd tempo",
        "notes.txt": "unsupported file type",
        "crowd.musicxml": "20 parts",
    }
    assert set(skipped) == set(expected)
    for name, reason in expected.items():
        assert reason in skipped[name] and "\n" not in skipped[name], (name, skipped[name])


def test_unknown_source_is_a_one_line_error():
    m = MUSIC()
    with pytest.raises(DataError, match="bach_chorales"):
        list(m.read([], "mozart", m.tokenizer))


def test_augment_transposes_within_range_and_keeps_shape(chorales):
    m = MUSIC(transpose=[-5, 6])
    tok = m.tokenizer
    ids = np.array(tok.encode(converter.parse(chorales[1][1])), dtype=np.int64)[:256]
    pitches = lambda x: tok.values[x[tok.types[x] == PITCH]]  # noqa: E731
    rng = np.random.default_rng(0)
    shifts = set()
    for _ in range(40):
        out = m.augment(ids.copy(), rng)
        assert out.shape == ids.shape and out.dtype == ids.dtype
        d = pitches(out) - pitches(ids)
        assert len(set(d)) == 1
        shifts.add(int(d[0]))
    assert shifts <= set(range(-5, 7)) and len(shifts) > 5
    high = ids.copy()
    high[tok.types[high] == PITCH] = tok.start[PITCH] + 125  # only +2 fits
    assert pitches(MUSIC(transpose=[3, 6]).augment(high, rng)).max() == 125  # no legal shift: unchanged
    assert pitches(m.augment(high, rng)).max() <= 127


def test_prompt_bars_and_bad_prompts(tmp_path, chorales):
    tok = MUSIC().tokenizer
    ids = prompt_tokens(tok, Path(chorales[0][1]), 2)
    assert ids[0] == tok.bos_id and tok.eos_id not in ids and ids.count(tok.bar_id) == 3 and ids[-1] == tok.bar_id
    assert tok.decode_events(ids).repairs == 0
    with pytest.raises(DataError, match="^--prompt .*missing.mid: no such file$"):
        Request(prompt=str(tmp_path / "missing.mid")).prompt_file()
    with pytest.raises(DataError, match="^--prompt .*: a folder; give one file$"):
        Request(prompt=str(tmp_path)).prompt_file()
    (tmp_path / "bad.musicxml").write_text("<score-partwise><part>")
    with pytest.raises(DataError, match="bad.musicxml") as e:
        prompt_tokens(tok, tmp_path / "bad.musicxml", None)
    assert "\n" not in str(e.value)


def test_constrained_sampling_stops_after_the_requested_bars(chorales):
    m = MUSIC()
    tok = m.tokenizer
    plan = m.plan(tok, Request(3, chorales[0][1], options=MusicGenerate(bars=3, prompt_bars=2)))
    rows = plan.prompts
    constraint = plan.constraint()
    assert isinstance(constraint, GrammarConstraint)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        mask = constraint(rows).numpy()
        assert mask.shape == (3, tok.vocab_size) and mask.any(axis=1).all()
        for row, allowed in zip(rows, mask):
            if row[-1] != tok.eos_id:
                choices = np.flatnonzero(allowed)
                # favour notes and bar lines, as a trained model would, so rows finish in a few bars
                weights = np.where(np.isin(choices, [tok.bar_id, tok.eos_id]), 40.0, 1.0)
                row.append(int(rng.choice(choices, p=weights / weights.sum())))
        if all(r[-1] == tok.eos_id for r in rows):
            break
    prompt_bars = len(tok.decode_events(m.plan(tok, Request(1, chorales[0][1], options=MusicGenerate(prompt_bars=2))).prompts[0]).bars)
    for row in rows:
        assert row[-1] == tok.eos_id
        events = tok.decode_events(row)
        assert events.repairs == 0
        if len(events.bars) > prompt_bars + 3:  # bars past the 3 new ones only let held notes end
            assert all(n.onset < events.bars[prompt_bars + 3].start for n in events.notes)
        assert tok.encode_events(events) == row


def test_bars_limit_keeps_every_note_inside_the_last_bar(chorales):
    """--bars 1: no EOS before the new bar, no duration that rings past it, and EOS once its notes end."""
    m = MUSIC()
    tok = m.tokenizer
    plan = m.plan(tok, Request(1, chorales[0][1], options=MusicGenerate(bars=1, prompt_bars=2)))
    row = plan.prompts[0]
    constraint = plan.constraint()

    def allowed() -> np.ndarray:
        return np.flatnonzero(constraint([row]).numpy()[0])

    assert tok.bar_id in allowed() and tok.eos_id not in allowed()  # the sampler asks first with the prompt alone
    row.append(tok.bar_id)  # the one new bar
    if not any(tok.types[a] == PITCH for a in allowed()):
        row.append(int(next(a for a in allowed() if tok.types[a] == PART)))
    row.append(int(next(a for a in allowed() if tok.types[a] == PITCH)))
    durations = [a for a in allowed() if tok.types[a] == DUR]
    assert len(durations) < tok.max_dur  # the longest ones would ring past the bar line
    row.append(int(durations[-1]))  # the longest allowed: it ends at the bar line
    assert tok.eos_id in allowed() and tok.bar_id not in allowed()


def test_sampling_defaults_yield_to_given_options():
    m = MUSIC()
    tok = m.tokenizer
    plan = m.plan(tok, Request(1, options=MusicGenerate(bars=4)))
    cfg = SamplingOptions().resolve(plan.sampling, ())
    assert (cfg.temperature, cfg.top_p, cfg.max_new_tokens) == (0.9, 0.95, 256)
    cfg = SamplingOptions(temperature=1.0, max_new_tokens=10).resolve(m.plan(tok, Request(1, options=MusicGenerate(bars=8))).sampling, ())
    assert (cfg.temperature, cfg.top_p, cfg.max_new_tokens) == (1.0, 0.95, 10)  # given values win
    assert m.plan(tok, Request(1, options=MusicGenerate(bars=8))).sampling["max_new_tokens"] == 512
    learned = {"items": 350, "median": 503, "p95": 1064}  # the Bach chorales: half run past 512 tokens
    budget = {bars: m.plan(tok, Request(1, options=MusicGenerate(bars=bars), item_tokens=learned)).sampling["max_new_tokens"] for bars in (None, 4)}
    assert budget == {None: 1064, 4: 256}  # without --bars as long as most pieces it learned; --bars sizes its own
    for p95, budget in ((300, 512), (30_000, 2048)):  # never below the core's budget for --min-bars, nor minutes long
        assert m.plan(tok, Request(1, options=MusicGenerate(), item_tokens={**learned, "p95": p95})).sampling["max_new_tokens"] == budget
    with pytest.raises(DataError, match="--bars"):
        m.plan(tok, Request(1, options=MusicGenerate(bars=0)))
    with pytest.raises(DataError, match="--prompt-bars needs --prompt"):
        m.plan(tok, Request(1, options=MusicGenerate(prompt_bars=2)))


def test_write_makes_midi_musicxml_and_png_that_parse_back(tmp_path, chorales):
    m = MUSIC()
    tok = m.tokenizer
    ids = tok.encode(converter.parse(chorales[2][1]))
    samples = [Sample(ids[:1], ids[1:-1], True, 1.0), Sample([tok.bos_id], [5, 900, 3, 3], False, 2.0)]
    paths = m.write(tok, samples, Request(2, out=tmp_path / "out"), Plan([]))
    assert sorted(p.name for p in paths) == sorted(f"sample_{i:03d}{s}" for i in range(2) for s in (".mid", ".musicxml", ".png"))
    want = sorted((n.part, n.onset, n.pitch, n.dur) for n in tok.decode_events(ids).notes)
    for p in paths[:2]:
        back = tok.extract(converter.parse(p))
        assert sorted((n.part, n.onset, n.pitch, n.dur) for n in back.notes) == want, p.name
        assert back.num_parts == 4
    from PIL import Image

    with Image.open(paths[2]) as img:
        assert img.size[0] > 200 and img.size[1] > 100
        assert len(set(img.convert("RGB").getdata())) > 4  # several part colours, not a blank page
        rgb = img.convert("RGB")
        w, h = rgb.size
        numbers, legend = set(rgb.crop((0, 0, w, 16)).getdata()), set(rgb.crop((0, h - 14, w, h)).getdata())
        assert not numbers & set(PART_COLOURS)  # the bar numbers' strip: no legend over them
        assert set(PART_COLOURS[:4]) <= legend  # the four parts named below the roll
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_an_out_named_as_a_file_names_the_files(tmp_path, chorales):
    m = MUSIC()
    tok = m.tokenizer
    ids = tok.encode(converter.parse(chorales[2][1]))
    sample = Sample(ids[:1], ids[1:-1], True, 1.0)
    one = m.write(tok, [sample], Request(1, out=tmp_path / "chorale.mid"), Plan([]))
    assert sorted(p.name for p in one) == ["chorale.mid", "chorale.musicxml", "chorale.png"] and not (tmp_path / "chorale.mid").is_dir()
    assert tok.extract(converter.parse(tmp_path / "chorale.musicxml")).num_parts == 4
    several = m.write(tok, [sample, sample], Request(2, out=tmp_path / "take.musicxml"), Plan([]))
    assert sorted(p.name for p in several) == sorted(f"take_{i:03d}{s}" for i in range(2) for s in (".mid", ".musicxml", ".png"))
    (tmp_path / "old.mid").mkdir()  # a folder with such a name stays a folder
    assert {p.parent.name for p in m.write(tok, [sample], Request(1, out=tmp_path / "old.mid"), Plan([]))} == {"old.mid"}


def test_show_lists_events_and_write_needs_out(capsys):
    m = MUSIC()
    tok = m.tokenizer
    samples = [Sample([tok.bos_id], [tok.bar_id], False, 0.5)]
    assert "Bar" in m.show(tok, samples, Request(1), Plan([])) and capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="request.out"):
        m.write(tok, samples, Request(1), Plan([]))


def test_metrics_summarize_and_evaluate(chorales):
    m = MUSIC()
    tok = m.tokenizer
    seqs = [tok.encode(converter.parse(p)) for _, p in chorales[:3]]
    data = m.metrics(tok, seqs)
    for k in ("pitch_class_entropy", "in_key_rate", "notes_per_bar", "pitch_range_part3", "outside_voice_range"):
        assert k in data
    assert 0.85 < data["in_key_rate"] <= 1 and 2 < data["pitch_class_entropy"] < np.log2(12)
    assert data["outside_voice_range"] < 0.05
    assert set(m.metrics(tok, [[tok.bos_id, 999, 17]])) <= set(data) | {"pieces_with_notes"}
    examples = [Example(np.array(s), f"c{i}", True, {"notes": float(np.sum(tok.types[s] == PITCH))}) for i, s in enumerate(seqs)]
    summary = m.summarize(tok, examples)
    assert 1.5 < summary["tokens_per_note"] < 3 and summary["roundtrip_inexact"] == []
    val = [np.array(s) for s in seqs[:1]]
    n_pred = len(seqs[0]) - 1
    report = EvalInputs(1.0, float(n_pred), n_pred, np.array([n_pred]), np.array([n_pred]), [np.array(s) for s in seqs[1:]], val)
    ev = m.evaluate(tok, report)
    notes = int(np.sum(tok.types[seqs[0]] == PITCH))
    assert ev["nll_per_note"] == pytest.approx(n_pred / notes)


def test_conditions_read_from_a_chorale_and_windows_holding_them_transpose_to_known_keys(chorales):
    from arseq.conditioning import Controls
    from arseq.modalities.music.conditions import composer_of, piece_conditions

    m = MUSIC(workers=1)
    tok = m.tokenizer
    path = dict(chorales)["bach/bwv269"]
    ev = tok.decode_events(tok.encode(converter.parse(path)))
    assert piece_conditions(ev, path) == {"meter": "3/4", "key": "G major", "composer": "bach"}  # music21's analysis: G major
    assert composer_of("/my/music/joplin/maple_leaf.mid") == "joplin"
    items = [{"key": "G major"}, {"key": "A minor"}, {"key": "A major"}, {"key": "F major"}]
    controls = Controls.learn(tok.vocab_size, ["key"], items, 0.1)
    window = np.asarray(controls.insert(tok.encode(converter.parse(path))[:40], controls.ids(items[0])))
    rng = np.random.default_rng(0)
    assert np.array_equal(m.augment(window, rng), window)  # without the controls: kept, its key token stays true
    seen = {}
    for _ in range(60):  # with them: transposed to keys training saw, the key token naming the key the notes are in
        out = m.augment(window, rng, controls=controls)
        notes = [n.pitch for n in tok.decode_events(controls.strip(out)).notes]
        shift = notes[0] - tok.decode_events(controls.strip(window)).notes[0].pitch
        assert notes == [n.pitch + shift for n in tok.decode_events(controls.strip(window)).notes]
        seen[shift] = controls.read(out).get("key")
    assert seen == {0: "G major", 2: "A major", -2: "F major"}  # G, G + 2 = A, G - 2 = F: never a key it never saw
    hidden = window.copy()
    hidden[1] = controls.unknown_id("key")  # the key hidden: any shift in range
    first = {tok.decode_events(controls.strip(m.augment(hidden, rng, controls=controls))).notes[0].pitch for _ in range(60)}
    assert len(first) > 3
    plain = np.asarray(tok.encode(converter.parse(path))[10:50])
    assert any(not np.array_equal(m.augment(plain, rng), plain) for _ in range(5))  # others are transposed
    assert m.condition_values(tok, [list(tok.encode(converter.parse(path)))])[0] == {"meter": "3/4", "key": "G major"}


def test_music21_composers_source_takes_chosen_folders_capped_per_composer():
    """modality.composers / per_composer pick the works of data.source music21_composers (a balanced corpus)."""
    from arseq.modalities.music.corpus import music21_composers

    chosen = music21_composers(("monteverdi", "mozart"), per_composer=3)
    assert [name.split("/")[0] for name, _ in chosen] == ["monteverdi"] * 3 + ["mozart"] * 3
    assert all(Path(path).is_file() for _, path in chosen) and len({name for name, _ in chosen}) == 6
    read = list(MUSIC(composers=["mozart"], per_composer=2, workers=1).read([], "music21_composers", MUSIC().tokenizer))
    assert [e.name.split("/")[0] for e in read] == ["mozart", "mozart"]
    assert all(isinstance(e, Example) and e.conditions["composer"] == "mozart" for e in read)
    with pytest.raises(DataError, match="per_composer must be a positive integer"):
        MUSIC(per_composer=0)
    with pytest.raises(DataError, match="choose works of data.source music21_composers"):
        list(MUSIC(per_composer=2).read([], "bach_chorales", MUSIC().tokenizer))
    with pytest.raises(DataError, match="no folder 'bachh'"):
        list(MUSIC(composers=["bachh"]).read([], "music21_composers", MUSIC().tokenizer))


def test_writing_says_which_pieces_the_budget_cut(tmp_path, caplog):
    """A piece that ran out of tokens stops mid-phrase: the user is told how many, the budget and what to change."""
    m = MUSIC()
    ids = prompt_tokens(m.tokenizer, Path(music21.corpus.getWork("bwv66.6")), 2)
    samples = [Sample(ids[:1], ids[1:], stopped, 1.0) for stopped in (True, False, False)]
    request = Request(3, options=MusicGenerate(), out=tmp_path / "a")
    with caplog.at_level("INFO", logger="arseq"):
        m.write(m.tokenizer, samples, request, Plan([], {"max_new_tokens": 1031}))
    assert "2 of 3 pieces reached the 1,031-token budget before their end" in caplog.text
    assert "--bars N writes N bars" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="arseq"):  # --bars given, --max-new-tokens too small for them
        request = Request(3, options=MusicGenerate(bars=4), out=tmp_path / "c", sampling=SamplingOptions(max_new_tokens=5))
        m.write(m.tokenizer, samples, request, Plan([], {"max_new_tokens": 256}))
    assert "reached the 5-token budget" in caplog.text and "--bars 4 takes about 256 tokens" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="arseq"):
        m.write(m.tokenizer, samples[:1], Request(1, options=MusicGenerate(), out=tmp_path / "b"), Plan([], {"max_new_tokens": 1031}))
    assert "budget" not in caplog.text
