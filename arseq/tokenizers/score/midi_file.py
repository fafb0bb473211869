"""A Standard MIDI File's notes, tempi, meters and keys, read from its bytes and paired as music21 pairs them.

Why a scanner of our own: music21's MIDI import (the reference, `midi_reader: music21`) ends every note-on
at the next note-off of its pitch and channel that follows it in the track, so several note-ons can share
one note-off: a pitch struck again while it sounds (two voices of one part), or a note-off written just
before its note-on at the same tick (music21's own writer does both). symusic (and so MidiTok) pairs
note-ons and note-offs first in, first out and silently drops a note-on left without a note-off of its
own; no library we know of pairs as music21 does or reports the raw events without building an object per
message. Reading a file is a single pass over its bytes in pure Python (~0.3 us an event, ~0.3 ms for a
chorale), with the pairing done in numpy afterwards. The same pass reads what else the score needs (ticks
per quarter, tempo, time and key signatures, the channel that marks drums), so symusic is not needed here at
all: parsing each file twice would cost more than the scan alone (symusic still reads performances).

The format (Standard MIDI Files 1.0): an `MThd` chunk (format, track count, ticks per quarter note), then
chunks of `MTrk` events, each a variable-length delta time (7 bits a byte, high bit set on all but the
last) and an event: a channel message (status 0x80-0xEF and one or two data bytes; a data byte where a
status byte would be repeats the last status, "running status"), a meta event (0xFF, type, variable-length
length, data) or a sysex event (0xF0 or 0xF7, variable-length length, data). A note-on of velocity 0 is a
note-off. Chunks of other types are skipped, as the standard says.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

TEMPO, TIME_SIGNATURE, KEY_SIGNATURE = 0x51, 0x58, 0x59  # meta event types


@dataclass
class TrackNotes:
    """The paired notes of one `MTrk` chunk in file order of their note-ons (ticks; channel 9 is drums)."""

    start: np.ndarray
    end: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    channel: np.ndarray


@dataclass
class MidiContent:
    """What the score reader needs of a MIDI file: tracks with at least one paired note, and the tempo,
    time and key signature events of every track as (tick, value...) in file order."""

    ticks_per_quarter: int
    tracks: list[TrackNotes] = field(default_factory=list)
    tempos: list[tuple[int, int]] = field(default_factory=list)  # (tick, microseconds per quarter note)
    time_signatures: list[tuple[int, int, int]] = field(default_factory=list)  # (tick, numerator, denominator)
    key_signatures: list[tuple[int, int]] = field(default_factory=list)  # (tick, sharps; flats negative)
    end: int = 0  # the last event's tick, over all tracks


def read_midi_file(data: bytes, max_events: int = 4_000_000) -> MidiContent:
    """Parse a Standard MIDI File; ValueError with a one-line reason for bytes that are not one (no header,
    SMPTE timing, a chunk or event cut off, an undefined status byte) or that hold more than `max_events`
    note-ons and note-offs together (checked as it reads, so memory stays bounded)."""
    if data[:4] != b"MThd" or len(data) < 14:
        raise ValueError("not a MIDI file (no MThd header)")
    division = int.from_bytes(data[12:14], "big")
    if division & 0x8000:
        raise ValueError("SMPTE (frame-based) MIDI timing is not supported")
    if division == 0:
        raise ValueError("the MIDI header gives 0 ticks per quarter note")
    out = MidiContent(division)
    events: list[int] = []  # tick, status, position of the data bytes in the chunk: each note-on and -off
    counts, bases = [], []  # per track: note events, and where its chunk's events start in `data`
    for number, kind, start, size in track_chunks(data):
        if kind == b"MTrk":
            before = len(events)
            try:
                _scan_track(data[start : start + size], events, 3 * max_events, out)
            except IndexError:
                raise ValueError(f"truncated MIDI (track {number} ends inside an event)") from None
            counts.append((len(events) - before) // 3)
            bases.append(start)
    if out.end >= 1 << 40:  # ~100 years at 480 ticks a quarter; numpy holds the ticks as int64
        raise ValueError(f"a track lasts {out.end:,} ticks")
    if events:
        rows = np.array(events, dtype=np.int64).reshape(-1, 3)
        rows[:, 2] += np.repeat(bases, counts)
        _pair(np.frombuffer(data, dtype=np.uint8), rows, counts, out)
    return out


def track_chunks(data: bytes) -> Iterator[tuple[int, bytes, int, int]]:
    """(track number from 1, chunk type, where its bytes start, their size) of each chunk the header of a
    Standard MIDI File promises; ValueError with one line where the file ends before one or inside it."""
    tracks = int.from_bytes(data[10:12], "big")
    at = 8 + int.from_bytes(data[4:8], "big")
    for i in range(tracks):
        if at + 8 > len(data):
            raise ValueError(f"truncated MIDI (header promises {tracks} tracks, file ends in track {i + 1})")
        size = int.from_bytes(data[at + 4 : at + 8], "big")
        if at + 8 + size > len(data):
            raise ValueError(f"truncated MIDI (track {i + 1} declares {size} bytes, {len(data) - at - 8} present)")
        yield i + 1, data[at : at + 4], at + 8, size
        at += 8 + size


def _scan_track(chunk: bytes, events: list[int], limit: int, out: MidiContent) -> None:
    """Append (tick, status, position of the data bytes) of each note-on and note-off of a track chunk's
    events to `events` (at most `limit` numbers in all), and its tempo, time and key signatures to `out`.
    The loop is the cost of reading a file, so it does no more than that: the notes are made in numpy
    afterwards (`_pair`). It runs in windows of the chunk, so the limit is checked but not at every event."""
    append = events.append
    tick = status = at = 0
    size = 2  # data bytes of the running status's message
    end = len(chunk)
    while at < end:
        if len(events) > limit:
            raise ValueError(f"more than {limit // 3:,} note-ons and note-offs")
        stop = min(end, at + 3 * 65536)
        while at < stop:
            byte = chunk[at]
            at += 1
            if byte < 0x80:  # a one-byte delta time, by far the most common
                tick += byte
            else:
                delta = byte & 0x7F
                while byte & 0x80:
                    byte = chunk[at]
                    at += 1
                    delta = (delta << 7) | (byte & 0x7F)
                tick += delta
            byte = chunk[at]
            if byte < 0x80:  # running status: the data bytes of another message like the last
                if not status:
                    raise ValueError(f"malformed MIDI (a data byte {byte:#04x} where an event's status byte should be)")
            elif byte < 0xF0:
                status = byte
                size = 1 if 0xC0 <= byte < 0xE0 else 2  # program change and channel pressure: one data byte
                at += 1
            else:  # meta or sysex: skipped by their length; running status stays as it was
                at = _meta_or_sysex(chunk, at, tick, out)
                continue
            if status < 0xA0:  # 0x8n note-off, 0x9n note-on
                append(tick)
                append(status)
                append(at)
            at += size
    if at > end:
        raise IndexError  # the last event's data bytes are cut off
    out.end = max(out.end, tick)


def _meta_or_sysex(chunk: bytes, at: int, tick: int, out: MidiContent) -> int:
    """Skip the meta or sysex event at `at` (its status byte), keeping tempo, time and key signatures; the
    position after it."""
    kind = chunk[at]
    if kind == 0xFF:
        meta = chunk[at + 1]
        at += 2
    elif kind in (0xF0, 0xF7):
        meta = -1
        at += 1
    else:
        raise ValueError(f"malformed MIDI (status byte {kind:#04x} is not used in MIDI files)")
    length, at = _varlen(chunk, at)
    body = chunk[at : at + length]
    if len(body) < length:
        raise IndexError
    if meta == TEMPO and length >= 3:
        out.tempos.append((tick, int.from_bytes(body[:3], "big")))
    elif meta == TIME_SIGNATURE and length >= 2:
        out.time_signatures.append((tick, body[0], 1 << min(body[1], 30)))
    elif meta == KEY_SIGNATURE and length >= 1:
        out.key_signatures.append((tick, body[0] - 256 if body[0] > 127 else body[0]))
    return at + length


def _varlen(chunk: bytes, at: int) -> tuple[int, int]:
    """A variable-length quantity at `at` and the position after it."""
    byte = chunk[at]
    at += 1
    value = byte & 0x7F
    while byte & 0x80:
        byte = chunk[at]
        at += 1
        value = (value << 7) | (byte & 0x7F)
    return value, at


def _pair(data: np.ndarray, events: np.ndarray, counts: list[int], out: MidiContent) -> None:
    """The notes of each track from its note events (rows of tick, status, position of the data bytes;
    `counts[i]` rows for track i), paired as music21 pairs them (`midi.translate.getNotesFromEvents`):
    each note-on (velocity > 0) ends at the first note-off (or note-on of velocity 0) of its pitch and
    channel that follows it in the track, whatever its tick; a note-off is not used up, so it ends every
    note-on of its pitch waiting for it; a note-on with no such note-off after it is dropped. So a
    note-off written before a note-on at the same tick does not end it. Tracks left without notes are
    left out, as music21 makes no part of them."""
    tick, status, pos = events[:, 0], events[:, 1], events[:, 2]
    pitch, velocity = data[pos].astype(np.int64), data[pos + 1].astype(np.int64)
    if ((pitch | velocity) & 0x80).any():
        raise ValueError("malformed MIDI (a note's pitch or velocity is over 127)")
    track = np.repeat(np.arange(len(counts)), counts)
    on = (status >= 0x90) & (velocity > 0)
    # (track, channel, pitch), then file order: the first note-off after a note-on with its key is next
    key = (track << 11 | (status & 0x0F) << 7 | pitch) << 32 | np.arange(len(tick))
    order = np.argsort(key[~on])
    off_keys, off_ticks = key[~on][order], tick[~on][order]
    if not len(off_keys):
        return
    i = np.minimum(np.searchsorted(off_keys, key[on]), len(off_keys) - 1)
    found = (off_keys[i] >> 32 == key[on] >> 32) & (off_keys[i] > key[on])
    start, end, i = tick[on][found], off_ticks[i[found]], track[on][found]
    pitch, velocity, channel = pitch[on][found], velocity[on][found], status[on][found] & 0x0F
    bounds = np.searchsorted(i, np.arange(len(counts) + 1))
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            out.tracks.append(TrackNotes(start[a:b], end[a:b], pitch[a:b], velocity[a:b], channel[a:b]))
