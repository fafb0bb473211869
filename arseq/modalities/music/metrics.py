"""Musical figures of token sequences (the same keys for samples and data): key, range, rhythm, repairs."""

from __future__ import annotations

import numpy as np

from arseq.modalities.music.conditions import analysed_key
from arseq.tokenizers.score import Events

# Usual ranges (MIDI) of the four chorale voices, soprano to bass, for the out-of-range metric.
VOICE_RANGES = ((60, 81), (53, 74), (48, 69), (40, 62))


# ---- metrics -----------------------------------------------------------------------------------
def score_metrics(pieces: list[Events]) -> dict[str, float | None]:
    """Descriptive statistics of decoded pieces; always the same keys (None where nothing to measure)."""
    pieces = [p for p in pieces if p.notes]
    entropy: list[float] = []
    in_key: list[float] = []
    ranges: dict[int, list[int]] = {part: [] for part in range(4)}
    notes = bars = outside = voiced = 0
    for ev in pieces:
        pcs = np.bincount([n.pitch % 12 for n in ev.notes], minlength=12)
        prob = pcs[pcs > 0] / pcs.sum()
        entropy.append(float(-(prob * np.log2(prob)).sum()))
        scale = key_scale(ev)
        in_key.append(float(np.mean([n.pitch % 12 in scale for n in ev.notes])))
        notes += len(ev.notes)
        bars += max(1, len(ev.bars))
        for part in range(min(4, ev.num_parts)):
            ps = [n.pitch for n in ev.notes if n.part == part]
            if ps:
                ranges[part].append(max(ps) - min(ps))
        if ev.num_parts == 4:
            for n in ev.notes:
                lo, hi = VOICE_RANGES[n.part]
                outside += not lo <= n.pitch <= hi
                voiced += 1
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    out = {
        "pieces_with_notes": len(pieces),
        "pitch_class_entropy": mean(entropy),
        "in_key_rate": mean(in_key),
        "notes_per_bar": notes / bars if bars else None,
        "notes_per_piece": notes / len(pieces) if pieces else None,
        "repairs_per_piece": mean([p.repairs for p in pieces]),
    }
    out.update({f"pitch_range_part{p}": mean(r) for p, r in ranges.items()})
    out["outside_voice_range"] = outside / voiced if voiced else None
    return out


def key_scale(ev: Events) -> set[int]:
    """Pitch classes of the piece's key as music21's Krumhansl-Schmuckler analysis finds it.

    Minor keys count the raised sixth and seventh as in key (melodic/harmonic minor), as Bach uses them.
    """
    tonic, mode, _ = analysed_key(ev)
    steps = (0, 2, 4, 5, 7, 9, 11) if mode == "major" else (0, 2, 3, 5, 7, 8, 9, 10, 11)
    return {(tonic + s) % 12 for s in steps}
