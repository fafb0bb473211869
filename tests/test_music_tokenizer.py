"""Score tokenizer: exact round trips, repair of malformed input, the grammar, transposition."""

from __future__ import annotations

from fractions import Fraction

import music21  # noqa: F401  (a hard dependency: a broken install must fail, not skip)
import numpy as np
import pytest
from music21 import chord, converter, key, meter, note, stream, tie  # noqa: E402

from arseq.tokenizers.score import KEY, PITCH, TS, Grammar, ScoreTokenizer  # noqa: E402

TOK = ScoreTokenizer()
Q = TOK.ppq


def notes_of(events):
    return sorted((n.part, n.onset, n.pitch, n.dur) for n in events.notes)


def measure(number, items, ts=None, ks=None, pad_left=0):
    """items: (pitch | list of pitches | None for a rest, quarterLength, tie type or None)."""
    m = stream.Measure(number=number)
    if ts:
        m.timeSignature = meter.TimeSignature(ts)
    if ks is not None:
        m.keySignature = key.KeySignature(ks)
    m.paddingLeft = pad_left
    for pitch, ql, tie_type in items:
        if pitch is None:
            el = note.Rest(quarterLength=ql)
        elif isinstance(pitch, list):
            el = chord.Chord(pitch, quarterLength=ql)
        else:
            el = note.Note(pitch, quarterLength=ql)
        if tie_type:
            el.tie = tie.Tie(tie_type)
        m.append(el)
    return m


def hand_built() -> tuple[stream.Score, list[tuple]]:
    """Two parts: pickup, tie over a bar line, rests, a chord, triplets, a meter and a key change."""
    t3 = Fraction(1, 3)
    upper = stream.Part(
        [
            measure(0, [(67, 1, None)], ts="4/4", ks=1, pad_left=3),  # pickup: one quarter
            measure(1, [(69, 1, None), (None, 1, None), ([60, 64, 67], 1, None), (72, 1, "start")]),
            measure(2, [(72, 1, "stop"), (71, t3, None), (69, t3, None), (67, t3, None), (65, 2, None)]),
            measure(3, [(64, 1.5, None), (62, 0.5, None), (60, 1, None)], ts="3/4", ks=-2),
            measure(4, [(None, 3, None)]),
        ]
    )
    lower = stream.Part(
        [
            measure(0, [(None, 1, None)], ts="4/4", ks=1, pad_left=3),
            measure(1, [(48, 4, "start")]),
            measure(2, [(48, 2, "stop"), (43, 0.25, None), (45, 0.25, None), (47, 0.5, None), (None, 1, None)]),
            measure(3, [(36, 3, None)], ts="3/4", ks=-2),
            measure(4, [(None, 2, None), (41, 1, None)]),
        ]
    )
    for p in (upper, lower):
        off = 0
        for m in p.getElementsByClass(stream.Measure):
            p.setElementOffset(m, off)
            off += m.duration.quarterLength
    score = stream.Score([upper, lower])
    q = lambda x: int(Fraction(x) * Q)  # noqa: E731
    expected = [
        (0, 0, 67, q(1)),
        (0, q(1), 69, q(1)),
        (0, q(3), 60, q(1)),
        (0, q(3), 64, q(1)),
        (0, q(3), 67, q(1)),
        (0, q(4), 72, q(2)),
        (0, q(6), 71, q(t3)),
        (0, q(6 + t3), 69, q(t3)),
        (0, q(6 + 2 * t3), 67, q(t3)),
        (0, q(7), 65, q(2)),
        (0, q(9), 64, q(1.5)),
        (0, q(10.5), 62, q(0.5)),
        (0, q(11), 60, q(1)),
        (1, q(1), 48, q(6)),
        (1, q(7), 43, q(0.25)),
        (1, q(7.25), 45, q(0.25)),
        (1, q(7.5), 47, q(0.5)),
        (1, q(9), 36, q(3)),
        (1, q(14), 41, q(1)),
    ]
    return score, sorted(expected)


def test_hand_built_score_round_trips_exactly(tmp_path):
    score, expected = hand_built()
    path = tmp_path / "hand.musicxml"
    score.write("musicxml", fp=str(path))
    events = TOK.extract(converter.parse(path))
    assert notes_of(events) == expected
    assert (events.quantized, events.dropped) == (0, 0)
    assert [b.length for b in events.bars] == [Q, 4 * Q, 4 * Q, 3 * Q, 3 * Q]
    assert [b.ts for b in events.bars] == [(4, 4)] * 3 + [(3, 4)] * 2
    assert [b.key for b in events.bars] == [1, 1, 1, -2, -2]
    ids = TOK.encode_events(events)
    decoded = TOK.decode(ids)
    back = TOK.extract(decoded)
    assert notes_of(back) == expected
    assert TOK.encode_events(back) == ids
    # and through a MusicXML file of the decoded score
    out = tmp_path / "decoded.musicxml"
    TOK.write_musicxml(decoded, out)
    assert TOK.encode(converter.parse(out)) == ids


def test_off_grid_notes_are_quantized_and_counted():
    p = stream.Part([measure(1, [(60, Fraction(1, 5), None), (62, Fraction(4, 5), None), (64, 3, None)], ts="4/4")])
    events = TOK.extract(stream.Score([p]))
    assert events.quantized == 2
    assert all(n.dur >= 1 for n in events.notes)


def test_bach_chorales_round_trip_losslessly_and_compactly():
    from arseq.modalities.music.corpus import bach_chorales

    total_tokens = total_notes = 0
    for name, path in bach_chorales()[:4]:
        events = TOK.extract(converter.parse(path))
        ids = TOK.encode_events(events)
        back = TOK.extract(TOK.decode(ids))
        assert notes_of(back) == notes_of(events), name
        assert TOK.encode_events(back) == ids, name
        assert TOK.decode_events(ids).repairs == 0
        total_tokens += len(ids)
        total_notes += len(events.notes)
    assert total_tokens / total_notes < 3.0  # MidiTok's REMI: ~4.4


def chorale_ids() -> list[int]:
    from arseq.modalities.music.corpus import bach_chorales

    return TOK.encode(converter.parse(bach_chorales()[0][1]))


def test_malformed_sequences_decode_to_valid_scores(tmp_path):
    ids = chorale_ids()
    rng = np.random.default_rng(0)
    bad = [
        [],
        [TOK.bos_id],
        [TOK.eos_id],
        [TOK.pad_id] * 5,
        [-3, 10**6, 5],
        ids[: len(ids) // 3],  # truncated mid-piece
        ids[1:],  # no BOS
        [t for i, t in enumerate(ids) if i % 7],  # tokens deleted
        rng.permutation(ids).tolist(),  # shuffled
        rng.integers(0, TOK.vocab_size, 400).tolist(),  # noise
        ids[:5] + rng.integers(0, TOK.vocab_size, 300).tolist(),
    ]
    for k, seq in enumerate(bad):
        events = TOK.decode_events(seq)
        score = TOK.to_score(events)
        assert len(score.parts) >= 1
        if k in (5, 7, 8, 10):
            path = tmp_path / f"bad{k}.musicxml"
            TOK.write_musicxml(score, path)
            assert notes_of(TOK.extract(converter.parse(path))) == notes_of(events) or not events.notes
    assert TOK.decode_events(bad[7]).repairs > 0
    assert TOK.decode_events(bad[8]).repairs > 0


def random_walk(rng: np.random.Generator, steps: int) -> list[int]:
    """Tokens drawn uniformly from what the grammar allows, i.e. what a constrained sampler may produce."""
    g = Grammar(TOK)
    ids = [TOK.bos_id]
    g.feed(TOK.bos_id)
    for _ in range(steps):
        allowed = np.flatnonzero(g.allowed())
        assert allowed.size, "the grammar must always allow something"
        t = int(rng.choice(allowed))
        if t == TOK.eos_id and len(ids) < steps // 2:
            continue
        assert g.feed(t)
        ids.append(t)
        if t == TOK.eos_id:
            break
    return ids


def test_grammar_walks_are_well_formed_and_canonical(tmp_path):
    g = Grammar(TOK)
    for t in (TOK.bos_id, TOK.bar_id, TOK.start[TS] + 40, TOK.start[KEY] + 7):
        assert not g.allowed()[TOK.eos_id]  # no empty pieces: encode never makes one
        assert g.feed(t)
    rng = np.random.default_rng(1)
    for i in range(6):
        ids = random_walk(rng, 250)
        events = TOK.decode_events(ids)
        assert events.repairs == 0  # cut short or not: what the grammar allows never needs repair
        if ids[-1] != TOK.eos_id:
            continue
        assert TOK.encode_events(events) == ids
        score = TOK.to_score(events)
        assert TOK.encode(score) == ids
        if i < 2:
            path = tmp_path / f"walk{i}.musicxml"
            TOK.write_musicxml(score, path)
            assert TOK.encode(converter.parse(path)) == ids


def test_transposition_is_exact():
    ids = np.array(chorale_ids())
    events = TOK.decode_events(ids)
    for k in (-5, -1, 3, 6):
        moved = TOK.decode_events(TOK.transpose(ids, k))
        assert notes_of(moved) == sorted((p, o, pitch + k, d) for p, o, pitch, d in notes_of(events))
        assert moved.repairs == 0
        for a, b in zip(events.bars, moved.bars):
            assert (b.key * 7 - a.key * 7 - k) % 12 == 0  # key signature moved by k semitones
    assert (TOK.transpose(ids, 0) == ids).all()
    keys = TOK.types[ids] == KEY
    assert (TOK.transpose(TOK.transpose(ids, 2), -2)[~keys] == ids[~keys]).all()


def test_state_round_trips():
    tok = ScoreTokenizer(ppq=12, max_parts=4, velocity=True, tempo=False)
    again = ScoreTokenizer.from_dict(tok.to_dict())
    assert again.vocab_size == tok.vocab_size and again.to_dict() == tok.to_dict()
    assert (again.types == PITCH).sum() == 128


def test_velocity_and_tempo_tokens():
    tok = ScoreTokenizer(velocity=True)
    from music21 import tempo

    p = stream.Part([measure(1, [(60, 1, None), (62, 1, None), (64, 2, None)], ts="4/4")])
    p.getElementsByClass(stream.Measure)[0].insert(0, tempo.MetronomeMark(number=90))
    for n, v in zip(p.recurse().notes, (30, 30, 110)):
        n.volume.velocity = v
    events = tok.extract(stream.Score([p]))
    ids = tok.encode_events(events)
    names = [tok.token_name(t) for t in ids]
    assert sum(n.startswith("Vel_") for n in names) == 2 and sum(n.startswith("Tempo_") for n in names) == 1
    back = tok.extract(tok.decode(ids))
    assert tok.encode_events(back) == ids
    assert abs(back.bars[0].tempo - 90) / 90 < 0.06


def test_too_many_parts_is_refused():
    parts = [stream.Part([measure(1, [(60, 4, None)], ts="4/4")]) for _ in range(20)]
    with pytest.raises(ValueError, match="20 parts"):
        TOK.extract(stream.Score(parts))
