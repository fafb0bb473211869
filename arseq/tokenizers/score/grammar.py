"""The grammar of score token sequences: one state machine that both reads ids and constrains sampling.

`feed` applies a token (repairing or skipping one that is not allowed, and counting it) and `allowed`
lists the tokens that keep the sequence well-formed, so decoding and constrained sampling can never
disagree about what a sequence means.

A note is `[Pos] [Vel] Pitch Dur` (a note longer than the longest Dur: `Dur_max ... Dur_max Dur_rest`,
each Dur after a Dur_max adding to it); a grace note is `[Pos] [Vel] Grace Pitch` (no Dur: it takes no time,
and the cursor stays at its onset, so the principal note after it needs no Pos). At one onset of a
block, grace notes come first, in the order they are played, then the ordinary notes by pitch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from arseq.tokenizers.score.events import Bar, Events, Note, clip_to_last_bar
from arseq.tokenizers.score.vocab import (
    BAR,
    BOS,
    DUR,
    EOS,
    GRACE,
    GRACE_KINDS,
    KEY,
    KEY_RANGE,
    LEN,
    PART,
    PITCH,
    POS,
    TEMPO,
    TEMPO_BINS,
    TS,
    VEL,
    VEL_BINS,
    ScoreVocab,
)


class Grammar:
    """The well-formedness state machine over token ids; `allowed()` lists what may come next."""

    def __init__(self, tok: ScoreVocab):
        self.t = tok
        self.repairs = 0
        self.bars: list[Bar] = []
        self.notes: list[Note] = []
        self.ended = False
        self.started = False  # seen anything (a BOS is only allowed first)
        self.stage = 5  # header stage after Bar: 0 TS, 1 Key, 2 Tempo, 3 Len, 4 body; 5 = before any bar
        self.ts: tuple[int, int] | None = None
        self.key: int | None = None
        self.tempo: int | None = None  # tempo bin
        self.part: int | None = None  # current part (persists across bars)
        self.block: int | None = None  # part whose block is open in this bar
        self.block_has_note = False
        self.cursor = 0  # bar-relative end of the block part's previous note
        self.last: tuple[int, int, int] | None = None  # (pos, pitch, dur) of the block's last note; pitch -1: grace
        self.pos: int | None = None  # pending Pos
        self.vel: int | None = None  # pending Vel
        self.pitch: int | None = None  # pending Pitch
        self.grace: int | None = None  # pending Grace (its kind)
        self.extend = False  # the last note ended on the longest Dur: a further Dur lengthens it
        self.part_end: dict[int, int] = {}
        self.max_end = 0  # where the longest-ringing note so far ends
        self.part_vel: dict[int, int] = {}

    # ---- rollback (speculative decoding takes rejected tokens back) ------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The state, cheaply: `bars` and `notes` only ever grow, only the last bar changes, and only the last
        note is replaced (a further Dur lengthens it)."""
        state = dict(self.__dict__)
        state.update(
            bars=len(self.bars),
            notes=len(self.notes),
            part_end=dict(self.part_end),
            part_vel=dict(self.part_vel),
            last_bar=_copy_bar(self.bars[-1]) if self.bars else None,
            last_note=self.notes[-1] if self.notes else None,
        )
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Back to a `snapshot` taken earlier on this grammar (its tokens fed since are forgotten)."""
        bars, notes, last_bar = self.bars, self.notes, state["last_bar"]
        self.__dict__.update({k: v for k, v in state.items() if k not in ("last_bar", "last_note")})
        del bars[state["bars"] :], notes[state["notes"] :]
        if last_bar is not None:
            bars[-1] = _copy_bar(last_bar)
        if state["last_note"] is not None:
            notes[-1] = state["last_note"]
        self.bars, self.notes = bars, notes
        self.part_end, self.part_vel = dict(state["part_end"]), dict(state["part_vel"])

    # ---- derived state -------------------------------------------------------------------------
    @property
    def bar(self) -> Bar | None:
        return self.bars[-1] if self.bars else None

    def _first_bar_open(self) -> bool:
        return len(self.bars) == 1 and (self.ts is None or self.key is None)

    def _body_ok(self) -> bool:
        """Bar/Part/EOS/note tokens may come: no half-built note, headers of the first bar given."""
        if self.ended or self._pending():
            return False
        if self.block is not None and not self.block_has_note:
            return False
        return not self._first_bar_open()

    def _pending(self) -> bool:
        """A note is half-built: a Pos, Vel, Grace or Pitch waits for the rest of it."""
        return self.pos is not None or self.vel is not None or self.pitch is not None or self.grace is not None

    def _note_part(self) -> int | None:
        """The part a note token would belong to now, or None when no part is known."""
        return self.block if self.block is not None else self.part

    # ---- the allowed set ----------------------------------------------------------------------
    def allowed(self) -> np.ndarray:
        t = self.t
        ok = np.zeros(t.vocab_size, dtype=bool)
        if self.ended:
            ok[t.eos_id] = True  # nothing more; the sampler stops on EOS
            return ok
        if not self.started:
            ok[t.bos_id] = True
        if self.pitch is not None:
            lo = 1
            if self.last is not None and self.last[:2] == (self._onset(), self.pitch):
                lo = self.last[2]
            ok[t.start[DUR] + lo - 1 : t.start[DUR] + t.max_dur] = True
            return ok
        if self.grace is not None:
            ok[t.start[PITCH] : t.start[PITCH] + 128] = True  # grace notes keep the order they are played in
            return ok
        if self.bar is None:
            ok[t.bar_id] = True
            return ok
        if self.stage <= 3 and self._allow_header(ok):
            return ok
        if self.vel is not None or self.pos is not None:
            self._allow_note_start(ok)
            return ok
        if not self._first_bar_open():
            self._allow_body(ok, self.bar)
        return ok

    def _allow_header(self, ok: np.ndarray) -> bool:
        """A bar's header: a time signature, key, tempo or length that changes something; True while the first
        bar still needs its meter and key (nothing else may come yet)."""
        t, first = self.t, len(self.bars) == 1
        if self.stage == 0:
            for i, ts in enumerate(t.time_signatures):
                if first or ts != self.ts:
                    ok[t.start[TS] + i] = True
        if self.stage <= 1 and not (first and self.ts is None):
            for i, k in enumerate(KEY_RANGE):
                if first and self.key is None or k != self.key:
                    ok[t.start[KEY] + i] = True
        if self._first_bar_open():
            return True
        if self.stage <= 2 and t.tempo:
            ok[t.start[TEMPO] : t.start[TEMPO] + TEMPO_BINS] = True
            if self.tempo is not None:
                ok[t.start[TEMPO] + self.tempo] = False
        nominal = t.ts_steps(self.ts)
        ok[t.start[LEN] : t.start[LEN] + t.max_bar] = True
        ok[t.start[LEN] + nominal - 1] = False
        return False

    def _allow_body(self, ok: np.ndarray, bar: Bar) -> None:
        """A bar's body: the next bar or the end (once the bar is whole), another part, a position after the
        last note's onset, or (after a position) the extension of a note."""
        t = self.t
        if self._body_ok():
            ok[t.bar_id] = True
            # a piece has notes (encode refuses empty scores), and none may ring past the last bar line
            ok[t.eos_id] = bool(self.notes) and self.max_end <= bar.start + bar.length
            if self.block is None:
                for p in range(t.max_parts):
                    ok[t.start[PART] + p] = p != self.part
            else:
                ok[t.start[PART] + self.block + 1 : t.start[PART] + t.max_parts] = True
        if self._note_part() is not None:
            cursor, last = self._block_view()
            lo = last[0] if last is not None else 0
            if last is not None and not self._onset_open(last):  # no note may join the last one's onset
                lo += 1
            if lo < bar.length:
                ok[t.start[POS] + lo : t.start[POS] + bar.length] = True
            if cursor < bar.length:
                ok[t.start[POS] + cursor] = False
            self._allow_note_start(ok)
        if self.extend:
            ok[t.start[DUR] : t.start[DUR] + t.max_dur] = True

    def _block_view(self) -> tuple[int, tuple[int, int, int] | None]:
        """(cursor, last note) of the block a note would go to, opening the implicit block if needed."""
        if self.block is not None:
            return self.cursor, self.last
        p = self._note_part()
        return max(0, self.part_end.get(p, 0) - self.bar.start), None

    def room(self) -> int | None:
        """Steps from the pending note's onset to the end of its bar (None when no Dur is being chosen)."""
        return self.bar.length - self._onset() if self.pitch is not None and self.bar is not None else None

    def _onset(self) -> int:
        return self.pos if self.pos is not None else self._block_view()[0]

    def _onset_open(self, last: tuple[int, int, int]) -> bool:
        """Whether a note can still follow `last` (onset, pitch, dur) at its onset: a higher pitch, the same
        pitch with a Dur as long (not after a note lengthened past the longest Dur), or a grace note."""
        t = self.t
        return last[1] + (last[2] > t.max_dur) < 128 or bool(t.grace and last[1] < 0)

    def _allow_note_start(self, ok: np.ndarray) -> None:
        t = self.t
        if t.velocity and self.vel is None:
            cur = self.part_vel.get(self._note_part())
            ok[t.start[VEL] : t.start[VEL] + VEL_BINS] = True
            if cur is not None:
                ok[t.start[VEL] + cur] = False
        onset = self._onset()
        if onset >= self.bar.length:
            return
        _, last = self._block_view()
        same_onset = last is not None and last[0] == onset
        if self.grace is None:  # by pitch; the same pitch again only if its Dur can be >= the last one's
            lo = max(0, last[1] + (last[2] > t.max_dur)) if same_onset else 0
            ok[t.start[PITCH] + lo : t.start[PITCH] + 128] = True
        if t.grace and (not same_onset or last[1] < 0):  # grace notes before an onset's ordinary notes
            ok[t.start[GRACE] : t.start[GRACE] + len(GRACE_KINDS)] = True

    # ---- transitions --------------------------------------------------------------------------
    def feed(self, tid: int) -> bool:
        """Apply one token; repair or skip it when it is not allowed. Returns True when taken as is."""
        if 0 <= tid < self.t.vocab_size and self.allowed()[tid]:
            self._apply(tid)
            return True
        self.repairs += 1
        if self.ended or not 0 <= tid < self.t.vocab_size:
            return False
        self._recover()
        if self.allowed()[tid]:
            self._apply(tid)
        return False

    def _recover(self) -> None:
        """Drop a half-built note or empty block and fill a first bar's missing headers with defaults."""
        self.pos = self.vel = self.pitch = self.grace = None
        if self.block is not None and not self.block_has_note:
            self.block = None
        if self.bars and self._first_bar_open():
            if self.ts is None:
                self._set_ts((4, 4))
            if self.key is None:
                self.key = self.bars[-1].key = 0
            self.stage = 4

    def _set_ts(self, ts: tuple[int, int]) -> None:
        self.ts = ts
        self.bars[-1].ts = ts
        self.bars[-1].length = self.t.ts_steps(ts)

    def _apply(self, tid: int) -> None:
        t = self.t
        kind, value = int(t.types[tid]), int(t.values[tid])
        self.started = True
        extending, self.extend = self.extend, False
        if kind == BOS:
            return
        if kind == EOS:
            self.ended = True
        elif kind == BAR:
            start = self.bar.start + self.bar.length if self.bar else 0
            ts = self.ts or (4, 4)
            tempo = t.tempo_value(self.tempo) if self.tempo is not None else None
            self.bars.append(Bar(start, t.ts_steps(ts), ts, self.key or 0, tempo))
            self.stage, self.block, self.block_has_note, self.last = 0, None, False, None
        elif kind == TS:
            self._set_ts(t.time_signatures[value])
            self.stage = 1
        elif kind == KEY:
            self.key = self.bar.key = value
            self.stage = 2
        elif kind == TEMPO:
            self.tempo = value
            self.bar.tempo = t.tempo_value(value)
            self.stage = 3
        elif kind == LEN:
            self.bar.length = value
            self.stage = 4
        elif kind == PART:
            self.stage = 4
            self.part = self.block = value
            self.block_has_note, self.last = False, None
            self.cursor = max(0, self.part_end.get(value, 0) - self.bar.start)
        else:  # note tokens
            self.stage = 4
            if self.block is None:
                self.cursor, self.last = self._block_view()
                self.block = self.part
            if kind == POS:
                self.pos = value
            elif kind == VEL:
                self.vel = value
            elif kind == GRACE:
                self.grace = value
            elif kind == PITCH and self.grace is not None:
                self._add_note(value, 0, self.grace + 1)
            elif kind == PITCH:
                self.pitch = value
            elif kind == DUR and extending:
                self._lengthen(value)
            elif kind == DUR:
                self._add_note(self.pitch, value, 0)

    def _lengthen(self, steps: int) -> None:
        """A Dur right after a Dur_max: the last note lasts `steps` longer."""
        n = self.notes[-1]
        self.notes[-1] = Note(n.part, n.onset, n.pitch, n.dur + steps, n.vel, n.grace)
        self.last = (self.last[0], self.last[1], n.dur + steps)
        self.cursor = self.last[0] + n.dur + steps
        self.part_end[n.part] = self.bar.start + self.cursor
        self.max_end = max(self.max_end, self.part_end[n.part])
        self.extend = steps == self.t.max_dur

    def _add_note(self, pitch: int, dur: int, grace: int) -> None:
        t, onset, p = self.t, self._onset(), self.block
        if self.vel is not None:
            self.part_vel[p] = self.vel
        vel = t.vel_value(self.part_vel[p]) if t.velocity and p in self.part_vel else 64
        self.notes.append(Note(p, self.bar.start + onset, pitch, dur, vel, grace))
        self.last = (onset, -1 if grace else pitch, dur)
        self.cursor = onset + dur
        self.part_end[p] = self.bar.start + self.cursor
        self.max_end = max(self.max_end, self.part_end[p])
        self.block_has_note = True
        self.pos = self.vel = self.pitch = self.grace = None
        self.extend = not grace and dur == t.max_dur

    def finish(self) -> Events:
        """The events read so far. A sequence cut short (no EOS, e.g. by a token budget) loses its half-built
        last note and has notes ringing past its last bar cut there: truncation, not repairs."""
        half_built = not self.ended and self._pending()
        if self.bars and self._first_bar_open():
            self._recover()
        notes, clipped = clip_to_last_bar(self.notes, self.bars)
        num_parts = max((n.part for n in notes), default=-1) + 1
        return Events(self.bars, notes, num_parts, dropped=int(half_built), repairs=self.repairs + (clipped if self.ended else 0))


def _copy_bar(bar: Bar) -> Bar:
    """A copy of a bar (faster than copy.copy, which matters once per sampled token)."""
    return Bar(bar.start, bar.length, bar.ts, bar.key, bar.tempo)
