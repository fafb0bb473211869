"""arseq: train and sample autoregressive transformers on text, music, images and proteins."""

__version__ = "0.1.0"
