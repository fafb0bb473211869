"""The fast MIDI path gives the same tokens as music21's path on the same files.

The files are Bach chorales from music21's corpus written to MIDI by music21 (in a temporary folder), and
works of the held-out composers (music21's corpus beyond Bach, `corpus.COMPOSERS`) written the same way.
music21's path reads MIDI on the tokenizer's grid (`quarterLengthDivisors=(24,)`). Differences are listed
by cause (`differences`); the measured counts and what each difference is: docs/music-at-scale.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("music21")
pytest.importorskip("symusic")

from arseq.errors import DataError  # noqa: E402
from arseq.modalities.music.conditions import analysed_key  # noqa: E402
from arseq.modalities.music.reading import load_piece, read_events  # noqa: E402
from arseq.tokenizers.score import ScoreTokenizer  # noqa: E402

TOK = ScoreTokenizer()
# short chorales, in 4/4 and 3/4, major and minor; bwv251 has 32nd notes
FEW = ("bach/bwv269", "bach/bwv347", "bach/bwv153.1", "bach/bwv86.6", "bach/bwv251")
# short works of five held-out composers: sextuplets and quintuplet-length values (schoenberg 19/6), 32nd
# notes and note-ons that share a note-off (verdi)
HELD_OUT = ("lusitano/allor_che_ignuda", "palestrina/Agnus", "schoenberg/opus19/movement2", "schoenberg/opus19/movement6", "verdi/laDonnaEMobile")
# measured (the slow tests): every file gives the same tokens by both paths
CHORALE_DIFFERENCES: dict[str, str] = {}
HELD_OUT_DIFFERENCES: dict[str, str] = {}


def write_midi(names: tuple[str, ...] | None, folder: Path) -> list[Path]:
    """Chorales of music21's corpus written to MIDI by music21 (all 350 when `names` is None)."""
    from music21 import converter

    from arseq.modalities.music.corpus import bach_chorales

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, path in bach_chorales():
        if names is None or name in names:
            dst = folder / (name.replace("/", "_") + ".mid")
            converter.parse(path).write("midi", fp=str(dst))
            out.append(dst)
    return out


def compare(files: list[Path]) -> list[str]:
    """The files whose tokens differ by the two paths."""
    return [f.stem for f in files if TOK.encode_events(read_events(TOK, f, "symusic")) != TOK.encode_events(read_events(TOK, f, "music21"))]


def write_composers_midi(names: tuple[str, ...] | None, folder: Path, per_composer: int | None = None) -> tuple[list[Path], list[str]]:
    """Works of the held-out composers written to MIDI by music21 (`names`, or each composer's first
    `per_composer` works), and the works music21 cannot write (e.g. repeats it cannot expand)."""
    from music21 import converter

    from arseq.modalities.music.corpus import COMPOSERS, music21_composers

    folder.mkdir(parents=True, exist_ok=True)
    out, unwritable = [], []
    for name, path in music21_composers(COMPOSERS, per_composer):
        if names is not None and name not in names:
            continue
        stem = name.replace("/", "_")
        try:
            converter.parse(path).write("midi", fp=str(folder / (stem + ".mid")))
        except Exception as e:  # music21's own writer: the work is left out and listed
            unwritable.append(f"{name} ({type(e).__name__})")
            continue
        out += sorted(folder.glob(f"{stem}.mid")) + sorted(folder.glob(f"{stem}-*.mid"))  # an opus: one file a score
    return out, unwritable


def unpaired_note_ons(path: Path) -> int:
    """Note-ons in the file (music21's MIDI parser, raw events) minus the notes symusic makes of them: a
    note-on that symusic's first-in-first-out pairing leaves without a note-off is dropped there."""
    import symusic
    from music21 import midi

    mf = midi.MidiFile()
    mf.open(str(path))
    mf.read()
    mf.close()
    ons = sum(1 for track in mf.tracks for ev in track.events if isinstance(ev, midi.MidiEvent) and ev.isNoteOn())
    return ons - sum(len(t.notes) for t in symusic.Score(str(path)).tracks)


def paired_alike(path: Path) -> bool:
    """Whether the scan pairs the file's note-ons and note-offs into the notes music21's own pairing
    (`midi.translate.getNotesFromEvents`, before quantizing and building measures) makes: (track, on tick,
    off tick, pitch, channel) of each."""
    from music21 import midi
    from music21.midi.translate import getNotesFromEvents, getTimeForEvents

    from arseq.tokenizers.score.midi_file import read_midi_file

    mf = midi.MidiFile()
    mf.open(str(path))
    mf.read()
    mf.close()
    theirs = [getNotesFromEvents(getTimeForEvents(t)) for t in mf.tracks if t.hasNotes()]
    theirs = sorted((i, n.onTime, n.offTime, n.event.pitch, n.event.channel - 1) for i, notes in enumerate(t for t in theirs if t) for n in notes)
    ours = read_midi_file(path.read_bytes()).tracks
    return theirs == sorted((i, *note) for i, t in enumerate(ours) for note in zip(*(a.tolist() for a in (t.start, t.end, t.pitch, t.channel))))


def differences(files: list[Path]) -> dict[str, str]:
    """File stem -> why the two paths differ, for each file they differ on: `music21 refused: ...` / `fast
    path refused: ...` (one path skips the file), `paired alike` (both pair the notes alike, `paired_alike`,
    and then round or lay bars apart), `other`."""
    out = {}
    for f in files:
        got = {}
        for reader in ("symusic", "music21"):
            try:
                got[reader] = read_events(TOK, f, reader)
            except DataError as e:
                got[reader] = str(e).removeprefix(f"{f}: ")
        fast, slow = got["symusic"], got["music21"]
        if isinstance(fast, str) or isinstance(slow, str):
            if fast != slow:
                out[f.stem] = f"music21 refused: {slow}" if isinstance(slow, str) else f"fast path refused: {fast}"
        elif TOK.encode_events(fast) != TOK.encode_events(slow):
            out[f.stem] = "paired alike" if paired_alike(f) else "other"
    return out


@pytest.fixture(scope="module")
def chorales(tmp_path_factory) -> list[Path]:
    return write_midi(FEW, tmp_path_factory.mktemp("chorales"))


def test_same_tokens_by_both_paths(chorales):
    assert compare(chorales) == []


def test_both_paths_keep_32nd_notes(chorales):
    """bwv251's 32nd notes are on arseq's grid (24 per quarter): both paths read them as written (music21's
    default quantization, 16ths and eighth triplets, would make a chord of 16ths of them)."""
    f = next(f for f in chorales if "bwv251" in f.name)
    fast, slow = read_events(TOK, f, "symusic"), read_events(TOK, f, "music21")
    assert any(n.dur == 3 for n in fast.notes) and any(n.dur == 3 for n in slow.notes)
    assert fast.lost.get("off_grid", 0) == 0


def test_what_music21_pairs_and_rounds_the_fast_path_does_too(tmp_path):
    """Files written here, event by event: a pitch struck again while it sounds (one note-off ends both), a
    note-off before its note-on at one tick, a note-off at its note-on's tick (music21: a grace note), a note
    shorter than half a step (music21: one step), a value halfway between two steps (music21: the earlier, unless
    its floating point rounds it up)."""
    from test_midi_file import END, ev, smf

    tracks = {
        "shared": ev(0, 0x90, 60, 80) + ev(240, 0x90, 60, 80) + ev(240, 0x80, 60, 0) + ev(480, 0x80, 60, 0),
        "off_first": ev(0, 0x90, 60, 80) + ev(480, 0x80, 60, 0) + ev(0, 0x90, 60, 80) + ev(480, 0x80, 60, 0),
        "zero": ev(0, 0x90, 60, 80) + ev(0, 0x80, 60, 0) + ev(480, 0x90, 62, 80) + ev(480, 0x80, 62, 0),
        "short": ev(0, 0x90, 60, 80) + ev(5, 0x80, 60, 0) + ev(475, 0x90, 62, 80) + ev(480, 0x80, 62, 0),
        "halfway": ev(0, 0x90, 60, 80) + ev(490, 0x80, 60, 0) + ev(0, 0x90, 62, 80) + ev(480, 0x80, 62, 0),
        # 2.5 steps: music21's float arithmetic rounds this halfway value up
        "float_halfway": ev(50, 0x90, 60, 80) + ev(430, 0x80, 60, 0),
    }
    for name, track in tracks.items():
        path = tmp_path / f"{name}.mid"
        path.write_bytes(smf(track + END))
        fast, slow = read_events(TOK, path, "symusic"), read_events(TOK, path, "music21")
        assert TOK.encode_events(fast) == TOK.encode_events(slow), name
    assert [(n.onset, n.dur, n.grace) for n in read_events(TOK, tmp_path / "zero.mid").notes] == [(0, 0, 7), (24, 24, 0)]
    assert [(n.onset, n.dur) for n in read_events(TOK, tmp_path / "float_halfway.mid").notes] == [(3, 21)]


def test_conditions_and_info_agree(chorales):
    """Key, meter and counts found in the worker are the same by both paths."""
    for f in chorales[:4]:
        a = load_piece(f.stem, str(f), TOK.to_dict(), False, "symusic")
        b = load_piece(f.stem, str(f), TOK.to_dict(), False, "music21")
        assert a[4] == b[4] and a[4]["key"] == analysed_key(read_events(TOK, f, "music21"))[2]
        assert {k: a[3][k] for k in ("notes", "bars", "parts")} == {k: b[3][k] for k in ("notes", "bars", "parts")}
        np.testing.assert_array_equal(a[1], b[1])


def test_meter_key_and_tempo_changes(tmp_path):
    """A piece with a 3/4 -> 2/4 change, a key change and a tempo change written by music21: same tokens."""
    from music21 import key, meter, note, stream, tempo

    part = stream.Part()
    part.append(tempo.MetronomeMark(number=72))
    part.append(meter.TimeSignature("3/4"))
    part.append(key.KeySignature(-2))
    for p in ["B-4", "C5", "D5", "E-5", "F5", "G5"]:
        part.append(note.Note(p, quarterLength=1))
    part.append(meter.TimeSignature("2/4"))
    part.append(key.KeySignature(2))
    part.append(tempo.MetronomeMark(number=96))
    for p in ["D5", "E5", "F#5", "A5"]:
        part.append(note.Note(p, quarterLength=1))
    part.append(note.Note("D5", quarterLength=2))
    path = tmp_path / "changes.mid"
    stream.Score([part]).write("midi", fp=str(path))
    fast, slow = read_events(TOK, path, "symusic"), read_events(TOK, path, "music21")
    assert TOK.encode_events(fast) == TOK.encode_events(slow)
    assert [b.ts for b in fast.bars] == [(3, 4), (3, 4), (2, 4), (2, 4), (2, 4)]
    assert fast.bars[0].key == -2 and fast.bars[-1].key == 2 and fast.bars[0].tempo == 72 and fast.bars[-1].tempo == 96


def test_off_grid_onsets_are_counted(tmp_path):
    """A performance-like file (onsets a few ms off the beat) is moved onto the grid and says so."""
    import symusic

    score = symusic.Score(480)
    track = symusic.Track("piano")
    for i in range(8):
        track.notes.append(symusic.Note(i * 480 + (0 if i % 2 else 7), 400, 60 + i, 80))
    score.tracks.append(track)
    path = tmp_path / "played.mid"
    score.dump_midi(str(path))
    ev = read_events(TOK, path, "symusic")
    assert ev.lost["off_grid"] == 4  # 7 ticks late (0.35 of a grid step): the notes 0, 2, 4 and 6
    assert [n.onset for n in ev.notes] == [24 * i for i in range(8)]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ARSEQ_SLOW_TESTS"), reason="slow: set ARSEQ_SLOW_TESTS=1")
def test_every_chorale(tmp_path):
    """All 350 chorales (~5 minutes on 2 cores: music21 writes and reads every one)."""
    files = write_midi(None, tmp_path)
    found = differences(files)
    print(f"{len(files)} chorales: {len(files) - len(found)} identical; differences {found}")
    assert len(files) == 350
    assert found == CHORALE_DIFFERENCES


def test_the_reference_keeps_notes_where_music21s_notation_moved_them(tmp_path):
    """bwv248.23-2's second part holds a chord (D4 G4) for 3 quarters from quarter 82.5, over a bar line, in a
    track that needs two voices. music21's `converter.parse` splits it at the bar line and resumes the tied half
    1.5 quarters late (at 85.5, not 84); the reference reads music21's import without that notation step."""
    [f] = write_midi(("bach/bwv248.23-2",), tmp_path)
    fast, slow = read_events(TOK, f, "symusic"), read_events(TOK, f, "music21")
    assert TOK.encode_events(fast) == TOK.encode_events(slow)
    assert {(n.pitch, n.dur) for n in slow.notes if n.part == 1 and n.onset == 82 * 24 + 12} >= {(62, 72), (67, 72)}


def test_held_out_composers_by_both_paths(tmp_path):
    files, unwritable = write_composers_midi(HELD_OUT, tmp_path)
    assert len(files) == 5 and not unwritable
    assert differences(files) == {}


def test_note_ons_symusic_drops_are_kept(tmp_path):
    """verdi/laDonnaEMobile as music21 writes it has 4 note-ons with no note-off of their own: symusic drops
    them; the fast path pairs every note-on as music21 does."""
    files, _ = write_composers_midi(("verdi/laDonnaEMobile",), tmp_path)
    assert unpaired_note_ons(files[0]) == 4 and paired_alike(files[0])


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ARSEQ_SLOW_TESTS"), reason="slow: set ARSEQ_SLOW_TESTS=1")
def test_held_out_composers_first_works(tmp_path):
    """Each held-out composer's first 3 works (~15 minutes on 2 cores; palestrina alone has 1,318)."""
    files, unwritable = write_composers_midi(None, tmp_path, per_composer=3)
    found = differences(files)
    print(f"{len(files)} files: {len(files) - len(found)} identical; differences {found}; music21 could not write {unwritable}")
    assert found == HELD_OUT_DIFFERENCES


def test_the_cache_key_changes_with_the_midi_reading():
    """Entries made by the old MIDI reading (symusic's pairing, music21 on 16ths) are not reused."""
    from arseq.data.cache_key import cache_key
    from arseq.data.config import DataConfig
    from arseq.modalities.music import MusicModality

    modality, data = MusicModality(midi_reader="music21"), DataConfig(source="bach_chorales")
    key = cache_key(modality, {"midi_reader": "music21"}, data, [], [], None)
    modality.reading_version = ""
    assert modality.reading_version != MusicModality().reading_version
    assert cache_key(modality, {"midi_reader": "music21"}, data, [], [], None) != key
