"""Grace notes (tokens, grammar, writing), reasons for inexact round trips, and tokenizers saved before grace tokens."""

from __future__ import annotations

import json

import music21  # noqa: F401  (a hard dependency: a broken install must fail, not skip)
import numpy as np
import pytest
import torch
from music21 import chord, converter, meter, note, stream  # noqa: E402
from safetensors.torch import save_model  # noqa: E402

from arseq.artifacts import checkpoint  # noqa: E402
from arseq.decode import SamplingConfig, generate  # noqa: E402
from arseq.modalities.base import Example  # noqa: E402
from arseq.modalities.music import MusicModality
from arseq.modalities.music.grammar import GrammarConstraint  # noqa: E402
from arseq.modalities.music.reading import _load, roundtrip_losses, roundtrip_report  # noqa: E402
from arseq.models.transformer import Transformer, TransformerConfig  # noqa: E402
from arseq.tokenizers.score import Grammar, ScoreTokenizer  # noqa: E402
from arseq.tokenizers.score.events import note_key, note_order  # noqa: E402
from arseq.tokenizers.score.vocab import DUR, GRACE, GRACE_KINDS, PITCH, POS  # noqa: E402

TOK = ScoreTokenizer()
# The state `ScoreTokenizer.to_dict()` saved before grace tokens existed, and that tokenizer's vocabulary size.
OLD_STATE = {"kind": "score", "ppq": 24, "max_parts": 16, "max_bar_quarters": 16, "max_dur_quarters": 16, "velocity": False, "tempo": True}
OLD_VOCAB_SIZE = 1439


def grace(pitch: str, value: str = "16th", slash: bool = True) -> note.Note:
    g = note.Note(pitch, type=value).getGrace(appoggiatura=not slash)
    assert g.duration.slash is slash
    return g


def graced_score() -> stream.Score:
    """Two parts: grace notes before a note, a chord and a rest, several in a row, a grace chord, in voices."""
    m1 = stream.Measure(number=1)
    m1.timeSignature = meter.TimeSignature("3/4")
    m1.append(
        [
            grace("D5"),
            grace("E5", "eighth", slash=False),
            note.Note("C5", quarterLength=1),
            grace("B4", "32nd"),
            chord.Chord(["E4", "G4"], quarterLength=1),
            grace("F5", "quarter"),
            note.Rest(quarterLength=1),
        ]
    )
    m2 = stream.Measure(number=2)
    m2.append([chord.Chord(["A4", "C5"], quarterLength=1).getGrace(), note.Note("G4", quarterLength=2), note.Note("F4", quarterLength=1)])
    low = stream.Measure(number=1)
    low.timeSignature = meter.TimeSignature("3/4")
    v1, v2 = stream.Voice(id="1"), stream.Voice(id="2")
    v1.append([grace("C3", "eighth"), note.Note("C3", quarterLength=3)])
    v2.append([note.Note("G3", quarterLength=1), grace("A3"), note.Note("G3", quarterLength=2)])
    low.insert(0, v1)
    low.insert(0, v2)
    low2 = stream.Measure(number=2)
    low2.append(note.Note("C3", quarterLength=3))
    return stream.Score([stream.Part([m1, m2]), stream.Part([low, low2])])


def keys(events) -> list[tuple]:
    return [note_key(n) for n in sorted(events.notes, key=note_order)]


def graces_of(score) -> list[tuple]:
    return [(p.midi, el.duration.type, el.duration.slash) for el in score.recurse().notes if el.duration.isGrace for p in el.pitches]


def test_grace_notes_round_trip_as_music21_grace_notes(tmp_path):
    score = graced_score()
    events = TOK.extract(score)
    assert events.lost == {} and events.dropped == 0
    assert sum(n.grace > 0 for n in events.notes) == 8 and all(n.dur == 0 for n in events.notes if n.grace)
    ids = TOK.encode(score)
    names = [TOK.token_name(t) for t in ids]
    assert "Grace_eighth_noslash" in names and names.count("Grace_16th") == 2
    first = names.index("Grace_16th")
    assert names[first : first + 6] == ["Grace_16th", "Pitch_74", "Grace_eighth_noslash", "Pitch_76", "Pitch_72", "Dur_24"]
    decoded = TOK.decode_events(ids)
    assert decoded.repairs == 0 and keys(decoded) == keys(events)  # in order: graces as played, then the note
    back = TOK.decode(ids)
    assert sorted(graces_of(back)) == sorted(graces_of(score))  # restored as grace notes, value and slash kept
    assert keys(TOK.extract(back)) == keys(events) and TOK.encode(back) == ids
    path = tmp_path / "graces.musicxml"
    TOK.write_musicxml(back, path)
    assert TOK.encode(converter.parse(path)) == ids  # and through a MusicXML file


def test_without_grace_tokens_graces_are_dropped_and_counted():
    old = ScoreTokenizer(grace=False)
    events = old.extract(graced_score())
    assert events.lost == {"grace_dropped": 8} and events.dropped == 8
    assert not any(n.grace for n in events.notes)
    assert not (old.types == GRACE).any()


def walk(rng: np.random.Generator, steps: int, grace_weight: float = 20.0) -> list[int]:
    """A walk drawn from the grammar's allowed tokens, grace tokens favoured so that many appear."""
    g, ids = Grammar(TOK), [TOK.bos_id]
    g.feed(TOK.bos_id)
    weights = np.where(TOK.types == GRACE, grace_weight, 1.0)
    weights[TOK.eos_id] = 0.0
    closing = np.ones(TOK.vocab_size)
    closing[[TOK.bar_id, TOK.eos_id]] = 1e4, 1e8  # after `steps`: end the piece (finishing a half-built note)
    for i in range(steps + 50):
        allowed = g.allowed() * (weights if i < steps else closing)
        assert allowed.any()
        t = int(rng.choice(TOK.vocab_size, p=allowed / allowed.sum()))
        assert g.feed(t)
        ids.append(t)
        if t == TOK.eos_id:
            break
    return ids


def test_grammar_walks_with_grace_notes_are_well_formed_and_canonical(tmp_path):
    """Dense walks: the ids are canonical, and every grace note survives writing, in memory and as MusicXML.
    (Their ordinary notes can fail to: two same-pitch notes of a part tied over the same instant, which dense
    random walks make often, are ambiguous once written; on such walks main's tokenizer failed 10 of 10.)"""
    rng = np.random.default_rng(3)
    graces = 0
    for i in range(6):
        ids = walk(rng, 200)
        events = TOK.decode_events(ids)
        assert events.repairs == 0  # what the grammar allows never needs repair
        graces += sum(n.grace > 0 for n in events.notes)
        assert ids[-1] == TOK.eos_id
        assert TOK.encode_events(events) == ids
        want = [k for k in keys(events) if k[4]]
        score = TOK.to_score(events)
        assert [k for k in keys(TOK.extract(score)) if k[4]] == want
        if i < 2:
            path = tmp_path / f"walk{i}.musicxml"
            TOK.write_musicxml(score, path)
            assert [k for k in keys(TOK.extract(converter.parse(path))) if k[4]] == want
    assert graces > 100


def test_grace_notes_come_before_an_onsets_ordinary_notes():
    ids = TOK.encode(graced_score())
    at = [TOK.token_name(t) for t in ids].index("Dur_24") + 1  # after Grace D5, Grace E5, C5 (a quarter) at 0
    g = Grammar(TOK)
    for t in ids[:at]:
        assert g.feed(t)
    grace_ids = TOK.start[GRACE] + np.arange(len(GRACE_KINDS))
    assert g.allowed()[grace_ids].all()  # at the cursor (beat 2): graces may come
    assert g.feed(TOK.start[POS] + 0)  # back to beat 1, where an ordinary note was: no more graces there
    assert not g.allowed()[grace_ids].any() and g.allowed()[TOK.start[PITCH] + 72]
    g = Grammar(TOK)
    for t in ids[: at - 5]:  # up to the first Grace token
        g.feed(t)
    ok = g.allowed()
    assert ok[TOK.start[PITCH] : TOK.start[PITCH] + 128].all() and ok.sum() == 128  # only a Pitch follows a Grace


def test_constraint_samples_are_well_formed_with_grace_tokens():
    constraint = GrammarConstraint(TOK)
    rng = np.random.default_rng(0)
    rows = [[TOK.bos_id] for _ in range(3)]
    weights = torch.from_numpy(np.where(TOK.types == GRACE, 30.0, 1.0))
    for _ in range(200):
        masks = constraint(rows)
        for row, mask in zip(rows, masks):
            if row[-1] == TOK.eos_id:
                continue
            p = (weights * mask).numpy()
            row.append(int(rng.choice(TOK.vocab_size, p=p / p.sum())))
    seen = 0
    for row in rows:
        events = TOK.decode_events(row)
        assert events.repairs == 0
        seen += sum(n.grace > 0 for n in events.notes)
    assert seen > 0


# ---- reasons for inexact round trips ---------------------------------------------------------------
def quintuplet_file(tmp_path):
    m = stream.Measure(number=1)
    m.timeSignature = meter.TimeSignature("2/4")
    m.append([note.Note(60 + i, quarterLength=0.2) for i in range(5)] + [note.Note("C5", quarterLength=1)])
    path = tmp_path / "quintuplets.musicxml"
    stream.Score([stream.Part([m])]).write("musicxml", fp=str(path))
    return path


def test_an_inexact_item_reports_its_reason(tmp_path):
    path = quintuplet_file(tmp_path)
    name, ids, exact, info, skip = _load("quintuplets", str(path), TOK.to_dict(), True)
    assert skip is None and exact is False and info["lost.off_grid"] == 5  # each lasts 1/5 of a quarter
    fine = music21.corpus.getWork("bach/bwv66.6")
    exact_item = _load("bwv66.6", str(fine), TOK.to_dict(), True)
    assert exact_item[2] is True and not any(k.startswith("lost.") for k in exact_item[3])
    examples = [Example(ids, name, exact, info), Example(exact_item[1], "bwv66.6", True, exact_item[3])]
    report = roundtrip_report(examples)
    assert report["roundtrip_reasons"] == {
        "off_grid": {"reason": "onset or duration moved onto the grid", "files": 1, "notes": 5, "first": ["quintuplets"]}
    }
    assert report["roundtrip_inexact"] == ["quintuplets: onset or duration moved onto the grid (5 notes)"]
    summary = MusicModality(workers=1).summarize(TOK, examples)
    assert summary["roundtrip_reasons"]["off_grid"]["files"] == 1


def test_notes_changed_by_writing_are_a_reason(monkeypatch):
    score = graced_score()
    events = TOK.extract(score)
    ids = TOK.encode_events(events)
    assert roundtrip_losses(TOK, events, ids) == {}
    tok = ScoreTokenizer()
    real = tok.to_score

    def loses_a_note(ev):
        ev.notes.pop()
        return real(ev)

    monkeypatch.setattr(tok, "to_score", loses_a_note)
    assert roundtrip_losses(tok, events, ids) == {"changed_in_writing": 1}
    monkeypatch.setattr(tok, "to_score", lambda ev: 1 / 0)
    assert roundtrip_losses(tok, events, ids) == {"rebuild_failed": 1}
    bad = ids[:5] + [TOK.start[PITCH] + 60] + ids[5:]  # a Pitch with no Dur: the grammar repairs it
    assert "grammar_repairs" in roundtrip_losses(TOK, events, bad)
    assert roundtrip_report([Example(ids, "odd", False, {})])["roundtrip_reasons"]["unexplained"]["files"] == 1


# ---- tokenizers saved before grace tokens ----------------------------------------------------------
def test_old_tokenizer_state_loads_with_its_old_vocabulary():
    old = ScoreTokenizer.from_dict(dict(OLD_STATE))
    assert old.vocab_size == OLD_VOCAB_SIZE and old.grace is False
    assert not (old.types == GRACE).any()
    new = ScoreTokenizer()
    assert new.vocab_size == OLD_VOCAB_SIZE + len(GRACE_KINDS)
    assert (new.types[:OLD_VOCAB_SIZE] == old.types).all() and (new.values[:OLD_VOCAB_SIZE] == old.values).all()
    assert ScoreTokenizer.from_dict(new.to_dict()).to_dict() == new.to_dict() and new.to_dict()["grace"] is True
    assert MusicModality(workers=1).load_tokenizer(dict(OLD_STATE)).vocab_size == OLD_VOCAB_SIZE


def test_checkpoint_with_an_old_tokenizer_loads_and_generates(tmp_path):
    cfg = TransformerConfig(vocab_size=OLD_VOCAB_SIZE, max_seq_len=64, n_layer=1, n_head=2, d_model=32)
    torch.manual_seed(0)
    save_model(Transformer(cfg), str(tmp_path / "model.safetensors"))
    options = {"transpose": [-5, 6], "ppq": 24, "max_parts": 16, "velocity": False, "tempo": True, "workers": 1}
    config = {"format": checkpoint.EXPORT_FORMAT, "model": cfg.__dict__, "modality": {"name": "music", "options": options}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "tokenizer.json").write_text(json.dumps(OLD_STATE))
    loaded = checkpoint.load(tmp_path)
    assert loaded.tokenizer.vocab_size == OLD_VOCAB_SIZE
    out = generate(
        loaded.model, [[loaded.tokenizer.bos_id]] * 2, SamplingConfig(max_new_tokens=60, seed=0), constraint=GrammarConstraint(loaded.tokenizer)
    )
    for tokens in out.tokens:
        assert all(t < OLD_VOCAB_SIZE for t in tokens)
        events = loaded.tokenizer.decode_events([loaded.tokenizer.bos_id, *tokens])
        assert events.repairs == 0
        loaded.tokenizer.to_score(events)


@pytest.mark.parametrize("value", [("eighth", True), ("half", False)])
def test_grace_kind_names(value):
    tid = TOK.start[GRACE] + GRACE_KINDS.index(value)
    assert TOK.token_name(tid) == f"Grace_{value[0]}{'' if value[1] else '_noslash'}"


def test_notes_longer_than_the_longest_dur_round_trip():
    """A pedal note of 40 quarters (ties over ten 4/4 bars): Dur_max Dur_max Dur_rest, read back whole."""
    bars = []
    for i in range(10):
        m = stream.Measure(number=i + 1)
        if i == 0:
            m.timeSignature = meter.TimeSignature("4/4")
        n = note.Note("C3", quarterLength=4)
        n.tie = music21.tie.Tie("start" if i == 0 else "stop" if i == 9 else "continue")
        m.append(n)
        bars.append(m)
    top = stream.Part([stream.Measure([note.Note("G4", quarterLength=4)], number=i + 1) for i in range(10)])
    score = stream.Score([top, stream.Part(bars)])
    events = TOK.extract(score)
    assert events.lost == {} and max(n.dur for n in events.notes) == 40 * TOK.ppq
    ids = TOK.encode_events(events)
    names = [TOK.token_name(t) for t in ids]
    at = names.index("Pitch_48")
    assert names[at + 1 : at + 4] == ["Dur_384", "Dur_384", "Dur_192"]
    decoded = TOK.decode_events(ids)
    assert decoded.repairs == 0 and keys(decoded) == keys(events)
    assert TOK.encode(TOK.to_score(decoded)) == ids
    g = Grammar(TOK)
    for t in ids[: at + 2]:
        g.feed(t)
    assert g.allowed()[TOK.start[DUR] : TOK.start[DUR] + TOK.max_dur].all()  # after Dur_max: any Dur extends
    g.feed(ids[at + 2])
    g.feed(ids[at + 3])
    assert not g.allowed()[TOK.start[DUR] : TOK.start[DUR] + TOK.max_dur].any()  # after a shorter Dur: the note is done


def test_walks_through_the_top_pitch_and_long_notes_never_dead_end():
    """The highest pitch held past the longest Dur (`Dur_max Dur_x`), then a Pos at the same onset, left no
    allowed token (a sampler's NaN): the grammar must not offer an onset no note can join."""
    rng = np.random.default_rng(0)
    weights = np.ones(TOK.vocab_size)
    weights[TOK.start[PITCH] + 127] = 300.0  # the top pitch, again and again
    weights[TOK.start[DUR] + TOK.max_dur - 1] = 300.0  # the longest Dur, so that notes are lengthened
    weights[TOK.types == POS] = 20.0
    weights[TOK.eos_id] = 0.0
    for _ in range(20):
        g = Grammar(TOK)
        g.feed(TOK.bos_id)
        for _ in range(300):
            allowed = g.allowed()
            assert allowed.any(), "no token allowed"
            p = allowed * weights
            if not p.any():
                p = allowed.astype(float)
            assert g.feed(int(rng.choice(TOK.vocab_size, p=p / p.sum())))
