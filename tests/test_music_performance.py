"""Performance tokens (note-on, note-off, 10 ms time shifts, velocity bins) on humanized chorales: the round
trip keeps onsets within half a step, the constraint keeps samples well-formed, prepare says when a score
tokenization would lose the timing, and samples are written as MIDI and a piano roll."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("symusic")

from arseq.data.config import DataConfig  # noqa: E402
from arseq.data.prepare import prepare  # noqa: E402
from arseq.modalities.base import Request, Sample  # noqa: E402
from arseq.modalities.music import MusicModality  # noqa: E402
from arseq.modalities.music import performance as perf  # noqa: E402
from arseq.modalities.music.humanize import humanize  # noqa: E402
from arseq.tokenizers.performance import PerformanceGrammar, PerformanceTokenizer, PlayedNote  # noqa: E402
from arseq.tokenizers.score import ScoreTokenizer  # noqa: E402

TOK = PerformanceTokenizer()


@pytest.fixture(scope="module")
def chorales():
    """Two Bach chorales as score events (music21 reads them)."""
    pytest.importorskip("music21")
    from music21 import corpus

    tok = ScoreTokenizer()
    return [tok.extract(corpus.parse(name)) for name in ("bach/bwv269", "bach/bwv347")]


@pytest.fixture(scope="module")
def played(chorales, tmp_path_factory) -> Path:
    """Six performances (two chorales, three seeds) as MIDI files."""
    folder = tmp_path_factory.mktemp("played")
    for i, ev in enumerate(chorales):
        for seed in range(3):
            perf.write_midi(humanize(ev, 24, seed=10 * i + seed), folder / f"chorale{i}_take{seed}.mid")
    return folder


def test_roundtrip_keeps_onsets_within_half_a_step(played):
    for f in sorted(played.glob("*.mid")):
        notes = perf.read_performance(f)
        back = TOK.decode(TOK.encode(notes))
        err = perf.roundtrip_errors(TOK, notes, TOK.encode(notes))
        assert len(back) == len(notes)
        assert err["onset_ms_max"] <= TOK.step_ms / 2 + 1e-6
        assert err["velocity_max"] <= 127 / TOK.velocity_bins / 2 + 1
        assert err["onset_ms_mean"] > 0  # the performance was off the 10 ms grid: the error is measured, not zero


def test_humanized_onsets_are_off_the_score_grid(chorales):
    """What a score tokenization would lose: the played onsets differ from the notated ones by ms."""
    notes = humanize(chorales[0], 24, seed=0)
    onsets = np.array(sorted({round(n.start, 4) for n in notes}))
    beat = 60 / 90
    off = np.abs(onsets / (beat / 4) - np.round(onsets / (beat / 4))) * beat / 4 * 1000
    assert np.median(off) > 3  # ms from the nearest 16th of the nominal tempo


def test_restruck_and_long_notes():
    notes = [PlayedNote(0.0, 2.5, 60, 64), PlayedNote(1.0, 1.5, 60, 100), PlayedNote(0.004, 0.3, 64, 20)]
    ids = TOK.encode(notes)
    back = TOK.decode(ids)
    assert [(n.pitch, round(n.start, 2), round(n.end, 2)) for n in back] == [(60, 0.0, 1.0), (64, 0.0, 0.3), (60, 1.0, 1.5)]
    assert sum(TOK.shift0 <= t < TOK.vel0 for t in ids) >= 3  # 1.5 s needs two shift tokens
    g = PerformanceGrammar(TOK)
    for t in ids:
        g.feed(t)
    assert g.repairs == 0


def test_constraint_keeps_random_samples_well_formed():
    """Tokens drawn at random among the allowed ones: every note-on ends, nothing needs repair."""
    rng = np.random.default_rng(0)
    constraint = perf.PerformanceConstraint(TOK)
    row = [TOK.bos_id]
    for _ in range(400):
        mask = constraint([row])[0].numpy()
        if not TOK.eos_id == row[-1]:
            assert mask[TOK.eos_id] == (not _sounding(row))
        choices = np.flatnonzero(mask)
        row.append(int(rng.choice(choices[choices != TOK.eos_id]) if len(choices) > 1 else choices[0]))
    while not constraint([row])[0].numpy()[TOK.eos_id]:
        mask = constraint([row])[0].numpy()
        row.append(int(np.flatnonzero(mask[TOK.off0 : TOK.shift0])[0]) + TOK.off0)
    row.append(TOK.eos_id)
    g = PerformanceGrammar(TOK)
    for t in row:
        g.feed(t)
    assert g.repairs == 0 and not g.started and len(g.finish()) > 0


def _sounding(row: list[int]) -> bool:
    g = PerformanceGrammar(TOK)
    for t in row:
        g.feed(t)
    return bool(g.started)


def test_prepare_with_each_tokenizer(played, tmp_path, monkeypatch):
    """The score tokenizer on performances: off_grid_share high and the suggestion; the performance
    tokenizer: the round trip's onset error within half a step."""
    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(tmp_path / "cache"))
    data = DataConfig(paths=str(played), val_fraction=0.0, workers=2)
    score = prepare(MusicModality(), {"tokenizer": "score"}, data, progress=False)
    assert score.stats["off_grid_share"] > 0.5 and "performance" in score.stats["suggestion"]
    played_stats = prepare(MusicModality(tokenizer="performance"), {"tokenizer": "performance"}, data, check_roundtrip=True, progress=False).stats
    assert played_stats["num_items"] == 6 and played_stats["roundtrip_exact"] == 1.0
    assert played_stats["roundtrip_onset_ms_max"] <= 5.0 + 1e-6
    assert "key" in played_stats["conditions"]


def test_samples_written_as_midi_and_piano_roll(tmp_path, played):
    notes = perf.read_performance(sorted(played.glob("*.mid"))[0])[:40]
    ids = TOK.encode(notes)
    sample = Sample(prompt=[TOK.bos_id], tokens=ids[1:-1], stopped=True, nll=1.0)
    written = perf.write_samples(TOK, [sample], Request(out=tmp_path / "out"))
    assert sorted(p.suffix for p in written) == [".mid", ".png"]
    back = perf.read_performance(tmp_path / "out" / "sample_000.mid")
    assert len(back) == 40 and max(abs(a.start - b.start) for a, b in zip(back, TOK.decode(ids))) < 0.002


def test_transposition_moves_note_ids():
    ids = np.array(TOK.encode([PlayedNote(0, 0.5, 60, 80)]))
    up = TOK.transpose(ids, 2)
    assert TOK.pitch_span(up) == (62, 62) and [n.pitch for n in TOK.decode(up)] == [62]


def test_fim_cuts_without_bars():
    """Fill-in-the-middle training (data.fim_rate > 0) on performance tokens: no bar lines, so any token is a cut
    (it was an AttributeError: the score tokenizer's bar_id)."""
    ids = np.array(TOK.encode([PlayedNote(0, 0.5, 60, 80), PlayedNote(0.5, 1.0, 62, 80)]))
    assert MusicModality(tokenizer="performance").fim_cuts(TOK, ids).tolist() == list(range(len(ids) + 1))
