"""The built-in `music` modality: scores as REMI-style tokens (`modality.py`).

Beside it: reading files in worker processes (`reading`), the MIDI and music21 corpora (`corpus`), piece
conditions and key finding (`conditions`, `key`), the score grammar as a sampling constraint (`grammar`),
bar infilling (`infill`), performances and humanizing (`performance`, `humanize`), figures (`metrics`),
the piano roll (`render`) and a WAV preview (`audio`).
"""

from arseq.modalities.music.modality import MusicGenerate, MusicModality

__all__ = ["MusicGenerate", "MusicModality"]
