"""Tokenizers: data of one modality in, integer ids out, and back."""

from arseq.tokenizers.base import BOS, EOS, PAD, SPECIALS, Tokenizer, read_tokenizer_state, save_tokenizer

__all__ = ["BOS", "EOS", "PAD", "SPECIALS", "Tokenizer", "read_tokenizer_state", "save_tokenizer"]
