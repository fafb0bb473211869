"""`ScoreTokenizer`: scores to ids and back, through events (reading, writing) and the grammar (decoding)."""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any, ClassVar, Sequence

from arseq.tokenizers.score import reading, writing
from arseq.tokenizers.score.events import Events, Note, note_order
from arseq.tokenizers.score.grammar import Grammar
from arseq.tokenizers.score.vocab import DUR, GRACE, KEY, KEY_RANGE, LEN, PART, PITCH, POS, TEMPO, TS, VEL, ScoreVocab


class ScoreTokenizer(ScoreVocab):
    """Scores (anything music21 parses) to REMI-style ids and back; see the package docstring."""

    kind: ClassVar[str] = "score"

    # ---- events <-> ids -----------------------------------------------------------------------
    def encode_events(self, ev: Events) -> list[int]:
        s = self.start
        ids = [self.bos_id]
        starts = [b.start for b in ev.bars]
        by_bar: list[list[Note]] = [[] for _ in ev.bars]
        for n in ev.notes:
            by_bar[bisect.bisect_right(starts, n.onset) - 1].append(n)
        ts = key = tempo = part = None
        part_end: dict[int, int] = {}
        part_vel: dict[int, int] = {}
        for i, (bar, notes) in enumerate(zip(ev.bars, by_bar)):
            ids.append(self.bar_id)
            if i == 0 or bar.ts != ts:
                ts = bar.ts
                ids.append(s[TS] + self.ts_index[ts])
            if i == 0 or bar.key != key:
                key = bar.key
                ids.append(s[KEY] + key - KEY_RANGE.start)
            if self.tempo and bar.tempo is not None and self.tempo_bin(bar.tempo) != tempo:
                tempo = self.tempo_bin(bar.tempo)
                ids.append(s[TEMPO] + tempo)
            if bar.length != self.ts_steps(ts):
                ids.append(s[LEN] + bar.length - 1)
            block = None
            for n in sorted(notes, key=note_order):
                if n.part != block:
                    block = n.part
                    if n.part != part:
                        ids.append(s[PART] + n.part)
                        part = n.part
                    cursor = max(0, part_end.get(n.part, 0) - bar.start)
                pos = n.onset - bar.start
                if pos != cursor:
                    ids.append(s[POS] + pos)
                if self.velocity and self.vel_bin(n.vel) != part_vel.get(n.part):
                    part_vel[n.part] = self.vel_bin(n.vel)
                    ids.append(s[VEL] + part_vel[n.part])
                if n.grace:  # a grace note: Grace Pitch, no Dur; the cursor stays at its onset
                    ids += [s[GRACE] + n.grace - 1, s[PITCH] + n.pitch]
                else:  # a note longer than the longest Dur: Dur_max, ..., then the rest
                    more, rest = divmod(n.dur - 1, self.max_dur)
                    ids += [s[PITCH] + n.pitch, *[s[DUR] + self.max_dur - 1] * more, s[DUR] + rest]
                cursor = pos + n.dur
                part_end[n.part] = bar.start + cursor
        ids.append(self.eos_id)
        return ids

    def decode_events(self, ids: Sequence[int]) -> Events:
        """Read any id sequence as events, repairing or skipping what is not well-formed."""
        g = Grammar(self)
        for tid in ids:
            g.feed(int(tid))
            if g.ended:
                break
        return g.finish()

    # ---- scores <-> ids -----------------------------------------------------------------------
    def encode(self, score: Any) -> list[int]:
        return self.encode_events(self.extract(score))

    def decode(self, ids: Sequence[int]) -> Any:
        return self.to_score(self.decode_events(ids))

    def extract(self, score: Any) -> Events:
        """Notes (ties merged), bars, meters, keys and tempi of a music21 score, on this grid.

        Raises ValueError with a one-line reason for what this tokenizer cannot represent.
        """
        return reading.read_score(self, score)

    def to_score(self, ev: Events) -> Any:
        """A music21 Score with one Part per part index (parts kept apart by distinct MIDI programs)."""
        return writing.to_score(self, ev)

    @staticmethod
    def write_musicxml(score: Any, path: str | Path) -> None:
        """Write a `to_score` score as is: music21's own notation pass would re-bar long bars."""
        writing.write_musicxml(score, path)

    # ---- state --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ppq": self.ppq,
            "max_parts": self.max_parts,
            "max_bar_quarters": self.max_bar_quarters,
            "max_dur_quarters": self.max_dur_quarters,
            "velocity": self.velocity,
            "tempo": self.tempo,
            "grace": self.grace,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ScoreTokenizer:
        """Rebuild from `to_dict`. A state saved before grace tokens existed has no "grace" key: it gets
        grace=False, hence exactly its old vocabulary, so old checkpoints load and generate as before."""
        return cls(**{"grace": False, **{k: v for k, v in state.items() if k != "kind"}})
