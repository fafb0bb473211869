"""The built-in `protein` modality: FASTA in, designs out as FASTA plus a property CSV (`modality.py`).

Beside it: FASTA records and their problems (`fasta`), generation options and the length constraint
(`generating`), redesigning a span (`infill`), sequence figures (`metrics`) and the design table (`designs`).
"""

from arseq.modalities.protein.generating import ProteinGenerate
from arseq.modalities.protein.modality import ProteinModality

__all__ = ["ProteinGenerate", "ProteinModality"]
