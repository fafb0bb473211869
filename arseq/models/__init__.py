"""The shared model: a plain-PyTorch causal transformer, its sampler and scorer. No modality in sight."""
from arseq.models.sampling import Generation, SamplingConfig, generate
from arseq.models.scoring import sequence_nll
from arseq.models.transformer import Transformer, TransformerConfig

__all__ = ["Generation", "SamplingConfig", "Transformer", "TransformerConfig", "generate", "sequence_nll"]
