"""OpenAI's `logprobs` on /v1/completions: the numbers are the model's log-softmax on prompt + completion (computed
here with the model itself), the likeliest tokens sorted, `echo` puts the prompt's tokens first with offsets into
the text, `stop` keeps only the kept tokens' numbers, `max_tokens: 0` scores a prompt without sampling, a sample
longer than the context is scored in windows as sequence_nll scores it, the engine process gives the same numbers,
and bad values are refused naming `logprobs`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from serving import Served, middle, tiny_model  # noqa: E402

from arseq.models.scoring import sequence_nll  # noqa: E402
from arseq.serve.logprobs import Scores, choice_logprobs  # noqa: E402
from arseq.tokenizers.bpe import BPETokenizer  # noqa: E402

SEEDED = {"prompt": "the cat", "max_tokens": 20, "n": 2, "seed": 3, "temperature": 0.9, "top_k": 5}


@pytest.fixture(scope="module")
def ckpt(trained):
    return trained / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def text(ckpt):
    s = Served(ckpt, slots=2, max_queue=8)
    yield s
    s.stop()


def reference(loaded, seq: list[int]) -> torch.Tensor:
    """(len(seq) - 1, V): the model's log-softmax predicting seq[1:], one forward pass (seq fits the context)."""
    assert len(seq) <= loaded.model.cfg.max_seq_len
    with torch.inference_mode():
        return torch.log_softmax(loaded.model(torch.tensor([seq[:-1]])).float()[0], dim=-1)


def token_id(tok, name: str) -> int:
    """The id of a token string of a character tokenizer's (the specials by their names)."""
    return {"<pad>": tok.pad_id, "<bos>": tok.bos_id, "<eos>": tok.eos_id}.get(name) or tok.encode(name)[0]


def check_choice(loaded, prompt: list[int], choice: dict, n: int) -> None:
    """A choice's logprobs (no echo) against the reference on prompt + its tokens."""
    tokens, lp = choice["token_ids"], choice["logprobs"]
    ref = reference(loaded, prompt + tokens)[len(prompt) - 1 :]
    assert lp["tokens"] == [loaded.tokenizer.decode([t]) for t in tokens]
    expected = ref.gather(1, torch.tensor(tokens)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(lp["token_logprobs"]), expected, atol=1e-4)
    for row, top, chosen in zip(ref, lp["top_logprobs"], lp["token_logprobs"]):
        values = list(top.values())
        assert len(top) == n and values == sorted(values, reverse=True) and chosen <= values[0] + 1e-6
        assert torch.allclose(torch.tensor(values), row.topk(n).values, atol=1e-4)
        assert all(abs(v - row[token_id(loaded.tokenizer, k)].item()) < 1e-4 for k, v in top.items())
    assert all(choice["text"][o : o + len(t)] == t for o, t in zip(lp["text_offset"], lp["tokens"]))


def test_token_logprobs_are_the_models_log_softmax_before_sampling_settings(text):
    status, out = text.post("/v1/completions", {**SEEDED, "logprobs": 3})
    assert status == 200, out
    prompt = [text.loaded.tokenizer.bos_id, *text.loaded.tokenizer.encode("the cat")]
    for choice in out["choices"]:
        assert len(choice["token_ids"]) == 20 and len(choice["logprobs"]["tokens"]) == 20
        check_choice(text.loaded, prompt, choice, 3)
    plain = text.post("/v1/completions", SEEDED)[1]["choices"]  # the same samples without logprobs
    assert [c["token_ids"] for c in plain] == [c["token_ids"] for c in out["choices"]] and plain[0]["logprobs"] is None


def test_echo_puts_the_prompt_tokens_first_with_offsets_into_the_text(text):
    out = text.post("/v1/completions", {**SEEDED, "n": 1, "logprobs": 0, "echo": True})[1]["choices"][0]
    lp, tok = out["logprobs"], text.loaded.tokenizer
    assert lp["top_logprobs"] is None and out["text"].startswith("the cat")
    assert lp["tokens"] == list("the cat") + [tok.decode([t]) for t in out["token_ids"]] and "".join(lp["tokens"]) == out["text"]
    assert lp["text_offset"] == list(range(len(out["text"])))  # a character a token
    seq = [tok.bos_id, *tok.encode("the cat"), *out["token_ids"]]  # BOS predicts the first prompt token
    expected = reference(text.loaded, seq).gather(1, torch.tensor(seq[1:])[:, None])[:, 0]
    assert torch.allclose(torch.tensor(lp["token_logprobs"]), expected, atol=1e-4)


def test_with_stop_the_logprobs_are_the_kept_tokens(text):
    body = {**SEEDED, "n": 1, "max_tokens": 30, "logprobs": 2}
    free = text.post("/v1/completions", body)[1]["choices"][0]
    stop = middle(free["text"])
    out = text.post("/v1/completions", {**body, "stop": stop})[1]["choices"][0]
    kept = len(out["token_ids"])
    assert out["finish_reason"] == "stop" and kept < len(free["token_ids"])
    mine, theirs = out["logprobs"], free["logprobs"]
    for key in ("tokens", "text_offset"):
        assert mine[key] == theirs[key][:kept], key
    assert torch.allclose(torch.tensor(mine["token_logprobs"]), torch.tensor(theirs["token_logprobs"][:kept]), atol=1e-5)
    for a, b in zip(mine["top_logprobs"], theirs["top_logprobs"][:kept], strict=True):
        assert list(a) == list(b) and torch.allclose(torch.tensor(list(a.values())), torch.tensor(list(b.values())), atol=1e-5)


def test_max_tokens_0_scores_the_prompt_without_sampling(text):
    before = text.metric("arseq_generated_tokens_total")
    body = {"prompt": "the cat sat on the mat.", "max_tokens": 0, "echo": True, "logprobs": 1}
    status, out = text.post("/v1/completions", body)
    assert status == 200, out
    choice, tok = out["choices"][0], text.loaded.tokenizer
    assert (choice["text"], choice["token_ids"], choice["finish_reason"]) == (body["prompt"], [], "length")
    assert out["usage"]["completion_tokens"] == 0 and text.metric("arseq_generated_tokens_total") == before
    seq = [tok.bos_id, *tok.encode(body["prompt"])]
    expected = reference(text.loaded, seq).gather(1, torch.tensor(seq[1:])[:, None])[:, 0]
    assert torch.allclose(torch.tensor(choice["logprobs"]["token_logprobs"]), expected, atol=1e-4)
    for without in ("echo", "logprobs"):  # 0 stays an error otherwise
        got, error = text.post("/v1/completions", {k: v for k, v in body.items() if k != without})
        assert got == 422 and error["error"]["field"] == "max_tokens" and error["error"]["message"].startswith("max_tokens: ")


def test_a_sample_longer_than_the_context_is_scored_in_windows(text):
    greedy = {"prompt": "the", "max_tokens": 90, "temperature": 0, "logprobs": 0}  # no EOS before its budget
    out = text.post("/v1/completions", greedy)[1]["choices"][0]
    loaded, tok = text.loaded, text.loaded.tokenizer
    context = loaded.model.cfg.max_seq_len
    prompt = [tok.bos_id, *tok.encode("the")]
    seq, lp = prompt + out["token_ids"], out["logprobs"]["token_logprobs"]
    assert len(seq) > 2 * context and len(lp) == 90
    nll, count = sequence_nll(loaded.model, [seq], start=[len(prompt)], stride=context // 2)
    assert count[0] == 90 and abs(sum(lp) + nll[0]) < 1e-3
    first = reference(loaded, seq[:context]).gather(1, torch.tensor(seq[1:context])[:, None])[len(prompt) - 1 :, 0]
    assert torch.allclose(torch.tensor(lp[: len(first)]), first, atol=1e-4)  # the first window: one plain pass


BAD = [  # (logprobs, other fields, status)
    (True, {}, 400),
    ("2", {}, 400),
    (2.5, {}, 400),
    ([1], {}, 400),
    (6, {}, 422),
    (-1, {}, 422),
    (1, {"stream": True}, 422),
]


@pytest.mark.parametrize("value, fields, status", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_logprobs_values_get_one_line_4xx_naming_the_field(text, value, fields, status):
    got, _, data = text.request("POST", "/v1/completions", {"prompt": "a", "max_tokens": 2, "logprobs": value, **fields})
    error = json.loads(data)["error"]
    assert got == status and error["field"] == "logprobs" and "logprobs" in error["message"] and "\n" not in error["message"], error


def test_off_values_answer_no_logprobs(text):
    for off in (None, False):
        status, out = text.post("/v1/completions", {"prompt": "a", "max_tokens": 2, "logprobs": off})
        assert status == 200 and out["choices"][0]["logprobs"] is None


def test_a_model_whose_samples_are_not_text_refuses_logprobs(tmp_path_factory):
    s = Served(tiny_model("image", tmp_path_factory), slots=1)
    try:
        status, out = s.post("/v1/completions", {"prompt": [3], "max_tokens": 2, "logprobs": 1})
    finally:
        s.stop()
    assert status == 422 and out["error"]["field"] == "logprobs" and "not text" in out["error"]["message"]


def test_a_conditioned_model_keeps_its_control_tokens_in_the_context_and_out_of_the_answer(tmp_path_factory):
    s = Served(tiny_model("protein", tmp_path_factory), slots=1)
    try:
        body = {"prompt": "MA", "max_tokens": 8, "seed": 2, "echo": True, "logprobs": 1, "conditions": {"tag": "polyW"}}
        status, out = s.post("/v1/completions", body)
    finally:
        s.stop()
    assert status == 200, out
    choice, loaded = out["choices"][0], s.loaded
    lp, tok, controls = choice["logprobs"], loaded.tokenizer, loaded.controls
    assert lp["tokens"] == list(choice["text"]) and choice["text"].startswith("MA")  # no <bos>, no <tag=polyW>
    seq = [tok.bos_id, *controls.ids({"tag": "polyW"}), *tok.encode("MA"), *choice["token_ids"]]
    expected = reference(loaded, seq).gather(1, torch.tensor(seq[1:])[:, None])[controls.width :, 0]
    assert torch.allclose(torch.tensor(lp["token_logprobs"]), expected, atol=1e-4)


def test_the_engine_process_gives_the_same_numbers(ckpt, text):
    bodies = [{**SEEDED, "logprobs": 2, "echo": True}, {"prompt": "a dog", "max_tokens": 0, "echo": True, "logprobs": 3}]
    expected = [text.post("/v1/completions", b)[1]["choices"] for b in bodies]
    remote = Served(ckpt, process=True, slots=2)
    try:
        got = [remote.post("/v1/completions", b)[1]["choices"] for b in bodies]
    finally:
        remote.stop()
    for mine, theirs in zip(got, expected):
        for a, b in zip(mine, theirs):
            assert (a["text"], a["token_ids"], a["logprobs"]["tokens"]) == (b["text"], b["token_ids"], b["logprobs"]["tokens"])
            assert a["logprobs"]["text_offset"] == b["logprobs"]["text_offset"]
            assert torch.allclose(torch.tensor(a["logprobs"]["token_logprobs"]), torch.tensor(b["logprobs"]["token_logprobs"]), atol=1e-5)


def test_token_strings_and_offsets_of_multi_byte_characters_and_an_unpredicted_first_token():
    text = "Naïve café 東京 and Zürich 🎵"
    tok = BPETokenizer.fit([text] * 20, vocab_size=300, min_frequency=2)
    loaded = SimpleNamespace(modality=SimpleNamespace(name="text"), tokenizer=tok, controls=None)
    ids = tok.encode("東京🎵 café")
    assert any(tok.decode([t]).endswith("\ufffd") for t in ids)  # some token is part of a character
    scores = Scores(1, [-0.5] * (len(ids) - 1), [], [])
    lp = choice_logprobs(loaded, ids, [], scores, echo=True)  # a prompt with no BOS: nothing predicts its first token
    assert lp["token_logprobs"] == [None] + [-0.5] * (len(ids) - 1) and lp["top_logprobs"] is None
    assert lp["tokens"] == [tok.decode([t]) for t in ids]  # "\ufffd" where a token is part of a character
    # each token begins where the text decoded before it ends, a character it only begins included
    assert lp["text_offset"] == [len(tok.decode(ids[:i]).rstrip("\ufffd")) for i in range(len(ids))]


def test_a_failing_pass_fails_its_request_and_the_server_goes_on(text, monkeypatch):
    def broken(*args):
        raise RuntimeError("no scores")

    monkeypatch.setattr("arseq.serve.loop.scores_of", broken)
    status, out = text.post("/v1/completions", {"prompt": "a", "max_tokens": 2, "logprobs": 1})
    assert status == 500 and "no scores" in out["error"]["message"]  # answered, not left waiting
    monkeypatch.undo()
    assert text.post("/v1/completions", {"prompt": "a", "max_tokens": 2, "logprobs": 1})[0] == 200
