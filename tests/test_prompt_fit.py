"""Prompts longer than the context are cut to what fits (whole bars, newest tokens), with one line saying so."""

from __future__ import annotations

import logging
from pathlib import Path

import music21
import torch

from arseq.app.generation import sample
from arseq.app.planning import make_plan
from arseq.artifacts.checkpoint import Loaded
from arseq.artifacts.metadata import RunMeta
from arseq.cli import main
from arseq.modalities import Request, SamplingOptions, resolve
from arseq.modalities.music import MusicGenerate
from arseq.modalities.music.reading import prompt_tokens
from arseq.models.transformer import Transformer, TransformerConfig

MUSIC = resolve("music")


def test_a_text_prompt_longer_than_the_context_keeps_its_newest_tokens(trained, capsys):
    prompt = "the cat sat on the mat. a dog ran to the park. we like to "  # 58 characters, context 32
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    assert main(["generate", "--checkpoint", ckpt, "--prompt", prompt, "--max-new-tokens", "12", "--seed", "1"]) == 0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "more than the model's context of 32" in lines[0] and "kept BOS and its newest 23 tokens (24 tokens)" in lines[0]
    assert lines[1].startswith("nothing written")  # no --out
    assert out.startswith(prompt) and len(out) > len(prompt)


def test_a_whole_chorale_as_prompt_is_cut_to_whole_bars_and_continues(caplog):
    m = MUSIC()
    tok = m.tokenizer
    path = str(music21.corpus.getWork("bwv66.6"))  # the 375-token chorale of the issue
    whole = prompt_tokens(tok, Path(path), None)
    kept, what = m.fit_prompt(tok, whole, 192)
    bars = int(what.split()[2])
    assert len(whole) > 256 and len(kept) <= 192 and kept == prompt_tokens(tok, Path(path), bars)
    assert tok.decode_events(kept).repairs == 0 and f"of {whole.count(tok.bar_id)} bars" in what
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, max_seq_len=256, n_layer=1, n_head=2, d_model=32))
    loaded = Loaded(model.eval(), tok, m, RunMeta("music", {}, {}, model.cfg.__dict__))
    request = Request(1, path, SamplingOptions(temperature=1.0, seed=3), MusicGenerate(bars=2))
    with caplog.at_level(logging.WARNING, logger="arseq"):
        (s,) = sample(loaded, make_plan(loaded, request), batch_size=1)
    assert s.prompt == m.fit_prompt(tok, whole, 256 - 64)[0] and len(s.tokens) > 0  # --bars 2: 128 new tokens, room 64
    assert tok.decode_events(s.prompt + s.tokens).repairs == 0  # the grammar constraint accepted the cut prompt
    err = " ".join(r.getMessage() for r in caplog.records)
    assert "bars" in err and "more than the model's context of 256" in err
