"""The built-in `text` modality: character-level or byte-level BPE tokens, one item per file (`modality.py`).

Beside it: filling a gap (`infill`) and what a near miss is in text (`near_miss`).
"""

from arseq.modalities.text.modality import TextGenerate, TextModality

__all__ = ["TextGenerate", "TextModality"]
