"""The shared model: a plain-PyTorch causal transformer and its scorer. No modality in sight."""

from arseq.models.scoring import sequence_nll
from arseq.models.transformer import Transformer, TransformerConfig

__all__ = ["Transformer", "TransformerConfig", "sequence_nll"]
