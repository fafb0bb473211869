"""A stream's text deltas (`jobs.text_delta`) add up to the text of all its tokens, token by token, without
decoding the whole stream per token: multi-byte characters split over byte-level BPE tokens wait until whole,
and what a token's text depends on (the tokens before it) is kept."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("starlette")

from arseq.serve.jobs import text_delta, text_of  # noqa: E402
from arseq.tokenizers.bpe import BPETokenizer  # noqa: E402
from arseq.tokenizers.char import CharTokenizer  # noqa: E402

TEXT = "Naïve café owners said: «déjà vu» — 東京 and Zürich, 2× a day.\nROMEO: 🎵 O, she doth teach the torches to burn bright!"


def streamed(loaded, tokens: list[int]) -> list[str]:
    deltas, offsets = [], (0, 0)
    for n in range(1, len(tokens) + 1):
        new, offsets = text_delta(loaded, tokens[:n], offsets)
        deltas.append(new)
    return deltas


def test_byte_level_bpe_deltas_add_up_and_never_split_a_character():
    tok = BPETokenizer.fit([TEXT] * 20, vocab_size=300, min_frequency=2)
    loaded = SimpleNamespace(modality=SimpleNamespace(name="text"), tokenizer=tok)
    tokens = tok.encode(TEXT)
    bytewise = [tok.decode([t]) for t in tokens]
    assert any("\ufffd" in b for b in bytewise)  # the test has characters split over tokens
    deltas = streamed(loaded, tokens)
    assert "".join(deltas) == TEXT == text_of(loaded, tokens)
    assert not any("\ufffd" in d for d in deltas)
    assert sum(1 for d in deltas if d == "") < len(tokens) // 2  # text streams as it comes, not at the end


def test_char_and_token_name_deltas_add_up():
    tok = CharTokenizer.fit([TEXT])
    loaded = SimpleNamespace(modality=SimpleNamespace(name="text"), tokenizer=tok)
    tokens = tok.encode(TEXT)
    assert streamed(loaded, tokens) == list(TEXT)

    names = SimpleNamespace(token_name=lambda t: f"Note_{t}")
    music = SimpleNamespace(modality=SimpleNamespace(name="music"), tokenizer=names)
    tokens = [60, 64, 67, 72]
    assert "".join(streamed(music, tokens)) == "Note_60 Note_64 Note_67 Note_72" == text_of(music, tokens)


def test_queued_tokens_of_a_sample_merge_into_one_event_in_order():
    from arseq.serve.app import merged

    events = [("token", 0, 5), ("token", 0, 6), ("token", 1, 7), ("token", 0, 8), ("done", []), ("token", 0, 9)]
    assert merged(events) == [("tokens", 0, [5, 6]), ("tokens", 1, [7]), ("tokens", 0, [8]), ("done", []), ("tokens", 0, [9])]
