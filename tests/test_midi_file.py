"""The MIDI scanner (`arseq.tokenizers.score.midi_file`) on bytes written here, event by event: running
status, note-offs as note-ons of velocity 0, music21's pairing, meta and sysex events, damaged files."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from arseq.tokenizers.score.midi_file import read_midi_file


def varlen(value: int) -> bytes:
    out = [value & 0x7F]
    while value := value >> 7:
        out.append((value & 0x7F) | 0x80)
    return bytes(reversed(out))


def ev(delta: int, *data: int) -> bytes:
    """One event: its delta time and its bytes (a status byte left out is running status)."""
    return varlen(delta) + bytes(data)


def smf(*tracks: bytes, division: int = 480, promised: int | None = None) -> bytes:
    header = b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks) if promised is None else promised, division)
    return header + b"".join(b"MTrk" + struct.pack(">I", len(t)) + t for t in tracks)


END = ev(0, 0xFF, 0x2F, 0)


def notes(track) -> list[tuple[int, int, int, int, int]]:
    return list(zip(*(a.tolist() for a in (track.start, track.end, track.pitch, track.velocity, track.channel))))


def test_running_status_and_velocity_zero_note_offs():
    track = ev(0, 0x90, 60, 80) + ev(480, 60, 0) + ev(0, 62, 70) + ev(240, 0x80, 62, 0) + ev(0, 0x91, 64, 90) + ev(960, 0x81, 64, 0) + END
    got = read_midi_file(smf(track))
    assert got.ticks_per_quarter == 480 and len(got.tracks) == 1
    assert notes(got.tracks[0]) == [(0, 480, 60, 80, 0), (480, 720, 62, 70, 0), (720, 1680, 64, 90, 1)]
    assert got.end == 1680


def test_two_note_ons_share_the_next_note_off():
    """A pitch struck again while it sounds: music21 ends both at the first note-off (symusic would drop one)."""
    track = ev(0, 0x90, 60, 80) + ev(240, 0x90, 60, 81) + ev(240, 0x80, 60, 0) + ev(240, 0x80, 60, 0) + END
    assert notes(read_midi_file(smf(track)).tracks[0]) == [(0, 480, 60, 80, 0), (240, 480, 60, 81, 0)]


def test_a_note_off_before_its_note_on_at_one_tick_does_not_end_it():
    track = ev(0, 0x90, 60, 80) + ev(480, 0x80, 60, 0) + ev(0, 0x90, 60, 80) + ev(480, 0x80, 60, 0) + END
    assert [n[:2] for n in notes(read_midi_file(smf(track)).tracks[0])] == [(0, 480), (480, 960)]
    # after it at the same tick, it does: a note of length 0
    track = ev(0, 0x90, 60, 80) + ev(0, 0x80, 60, 0) + ev(480, 0x80, 60, 0) + END
    assert [n[:2] for n in notes(read_midi_file(smf(track)).tracks[0])] == [(0, 0)]


def test_pairing_keeps_to_its_channel_and_track_and_drops_a_note_on_never_ended():
    first = ev(0, 0x90, 60, 80) + ev(0, 0x91, 60, 80) + ev(480, 0x80, 60, 0) + ev(0, 0x90, 67, 80) + END
    second = ev(960, 0x81, 60, 0) + END  # another track's note-off ends nothing here
    got = read_midi_file(smf(first, second))
    assert len(got.tracks) == 1 and notes(got.tracks[0]) == [(0, 480, 60, 80, 0)]


def test_meta_and_sysex_events_are_read_or_skipped():
    conductor = (
        ev(0, 0xFF, 0x03, 5, *b"Title")
        + ev(0, 0xFF, 0x51, 3, 0x07, 0xA1, 0x20)  # 500,000 us a quarter
        + ev(0, 0xFF, 0x58, 4, 3, 2, 24, 8)  # 3/4
        + ev(0, 0xFF, 0x59, 2, 0xFD, 0)  # three flats
        + ev(0, 0xF0, 3, 0x43, 0x12, 0xF7)
        + ev(1440, 0xFF, 0x51, 3, 0x0F, 0x42, 0x40)
        + END
    )
    music = ev(0, 0xC0, 19) + ev(0, 0x90, 72, 64) + ev(0, 0xF7, 1, 0x01) + ev(100, 72, 0) + ev(0, 0xB0, 7, 100) + ev(0, 0xE0, 0, 64) + END
    got = read_midi_file(smf(conductor, music))
    assert got.tempos == [(0, 500_000), (1440, 1_000_000)] and got.time_signatures == [(0, 3, 4)] and got.key_signatures == [(0, -3)]
    assert len(got.tracks) == 1 and notes(got.tracks[0]) == [(0, 100, 72, 64, 0)]  # the sysex kept the running status


def test_other_chunks_are_skipped():
    track = ev(0, 0x90, 60, 80) + ev(480, 0x80, 60, 0) + END
    data = smf(track, promised=2)
    data = data[:14] + b"XFIH" + struct.pack(">I", 3) + b"abc" + data[14:]
    assert len(read_midi_file(data).tracks) == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no MThd header"),
        (b"RIFF" + bytes(20), "no MThd header"),
        (smf(ev(0, 0x90, 60, 80) + END, promised=30_000), "header promises 30000 tracks, file ends in track 2"),
        (smf(ev(0, 0x90, 60, 80) + END)[:-3], "track 1 declares 8 bytes, 5 present"),
        (smf(ev(0, 0x90, 60, 80) + ev(480, 0x80, 60)), "track 1 ends inside an event"),
        (smf(ev(0, 0xFF, 0x03, 9, *b"abc")), "track 1 ends inside an event"),
        (smf(ev(0, 60, 80)), "a data byte 0x3c where an event's status byte should be"),
        (smf(ev(0, 0xF4, 1, 2)), "status byte 0xf4"),
        (smf(ev(0, 0x90, 60, 0x90) + ev(10, 0x80, 60, 0)), "over 127"),
        (smf(END, division=0xE728), "SMPTE"),
        (smf(ev(2**45, 0x90, 60, 80) + ev(1, 0x80, 60, 0)), "lasts"),
    ],
)
def test_damaged_files_are_one_line_value_errors(data, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")) as e:
        read_midi_file(data)
    assert "\n" not in str(e.value)


def test_the_note_limit_holds_while_reading():
    track = b"".join(ev(1, 0x90, 60, 80) + ev(1, 0x80, 60, 0) for _ in range(200_000)) + END
    assert len(read_midi_file(smf(track)).tracks[0].start) == 200_000
    with pytest.raises(ValueError, match="more than 1,000 note-ons and note-offs"):
        read_midi_file(smf(track), max_events=1_000)


def test_a_large_file_is_read_quickly():
    """Well under a microsecond an event (~0.3 us: the scan is what reading a MIDI file costs)."""
    import time

    track = b"".join(ev(0, 0x90, 60 + i % 12, 80) + ev(120, 0x80, 60 + i % 12, 0) for i in range(20_000)) + END
    t = time.perf_counter()
    got = read_midi_file(smf(track))
    assert time.perf_counter() - t < 0.5
    np.testing.assert_array_equal(got.tracks[0].end - got.tracks[0].start, 120)
