"""OpenAI's `stop` and `echo` on /v1/completions: the stop-string matcher (split over deltas, the first stop
string to end wins, text held back while it may begin one, multi-byte characters), then over HTTP: a seeded
sample cut before the stop string it is known to contain, streamed or not; bad values refused naming `stop`;
`echo` puts the prompt's text first; and a stopped row leaves the engine at once, its slot free."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from serving import Served, events, middle, stopped_row_frees_its_slot  # noqa: E402

from arseq.serve.stops import SampleText, StopMatcher  # noqa: E402
from arseq.tokenizers.bpe import BPETokenizer  # noqa: E402

TEXT = "Naïve café owners said: «déjà vu» — 東京 and Zürich, 2× a day.\nROMEO: 🎵 O, she doth teach the torches to burn bright!"


def fed(stops: list[str], deltas: list[str]) -> tuple[list[str], bool]:
    """What a matcher emits for each delta, the held-back text released at the end unless it stopped."""
    m = StopMatcher(stops)
    out, stopped = [], False
    for d in deltas:
        safe, stopped = m.feed(d)
        out.append(safe)
    return out + ([] if stopped else [m.flush()]), stopped


def test_a_stop_string_split_over_deltas_is_found_and_left_out():
    assert fed(["STOP"], ["xxST", "O", "Pyy", "zz"]) == (["xx", "", "", ""], True)
    assert fed(["\n\n"], ["ab\n", "\ncd"]) == (["ab", ""], True)


def test_the_stop_string_that_ends_first_wins_however_the_text_is_split():
    text = "the cat sat on the mat"
    for stops in (["sat", "cat", "mat"], ["mat", "cat", "sat"]):
        assert "".join(fed(stops, [text])[0]) == "the "
    # "bc" is complete before "abcd" is: a sample sent a character at a time stops there
    for cuts in itertools.combinations(range(1, 6), 2):
        parts = ["xabcdy"[i:j] for i, j in zip((0, *cuts), (*cuts, 6))]
        assert "".join(fed(["abcd", "bc"], parts)[0]) == "xa"
        assert "".join(fed(["bc", "abc"], parts)[0]) == "x"  # both end at "c": the longer, which starts first


def test_a_held_back_start_that_is_no_stop_string_is_emitted_later():
    assert fed(["END"], ["the E", "N", "d of it"]) == (["the ", "", "ENd of it", ""], False)
    assert fed(["END"], ["so E"]) == (["so ", "E"], False)  # the sample ended: nothing can complete it now


def test_multi_byte_characters():
    assert fed(["東京"], ["Zür", "ich 東", "京 and"]) == (["Zür", "ich ", ""], True)
    assert fed(["🎵!"], ["a🎵", "🎵b"]) == (["a", "🎵🎵b", ""], False)


def test_a_sample_keeps_the_tokens_up_to_the_one_that_completes_its_stop_string():
    tok = BPETokenizer.fit([TEXT] * 20, vocab_size=300, min_frequency=2)
    loaded = SimpleNamespace(modality=SimpleNamespace(name="text"), tokenizer=tok)
    tokens = tok.encode(TEXT)
    for stop in ("東京", "Zü", "ROMEO", "🎵"):
        sample, streamed = SampleText(loaded, [stop, "never in it"]), []
        for t in tokens:  # as a stream gets them, one event a token
            sample.add([t])
            streamed.append(sample.take())
        assert sample.stopped and "".join(streamed) == sample.whole() == TEXT[: TEXT.index(stop)]
        assert stop in tok.decode(sample.tokens) and stop not in tok.decode(sample.tokens[:-1])
        assert sample.tokens == tokens[: len(sample.tokens)] and sample.add(tokens[:3]) == []


def test_matcher_refuses_empty_stop_strings():
    for stops in ([], [""], ["a", ""]):
        with pytest.raises(ValueError):
            StopMatcher(stops)


# ---- over HTTP ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text(trained):
    s = Served(trained / "checkpoints" / "last.ckpt", slots=2, max_queue=8)
    yield s
    s.stop()


def cut(text: str, stops: list[str]) -> str | None:
    """`text` before the stop string that ends first in it (None: none is in it)."""
    ends = [(text.index(s) + len(s), text.index(s)) for s in stops if s in text]
    return text[: min(ends)[1]] if ends else None


def streamed(s: Served, body: dict) -> list[dict]:
    conn, r = s.stream("/v1/completions", body)
    frames = [d for _, d in events(r)]
    conn.close()
    assert frames[-1] == "[DONE]"
    return [json.loads(f)["choices"][0] for f in frames[:-1]]


def test_stop_strings_cut_each_sample_streamed_or_not(text):
    body = {"prompt": "the cat", "max_tokens": 60, "n": 3, "seed": 11, "temperature": 0.9}
    free = text.post("/v1/completions", body)[1]["choices"]
    stops = [middle(free[0]["text"]), middle(free[1]["text"]), "zzq"]
    status, out = text.post("/v1/completions", {**body, "stop": stops})
    assert status == 200, out
    for c, f in zip(out["choices"], free):
        expected = cut(f["text"], stops)
        if expected is None:  # this sample holds none of them: as before
            assert (c["text"], c["token_ids"], c["finish_reason"]) == (f["text"], f["token_ids"], f["finish_reason"])
            continue
        assert c["text"] == expected and c["finish_reason"] == "stop" and len(c["token_ids"]) < len(f["token_ids"])
        assert c["token_ids"] == f["token_ids"][: len(c["token_ids"])]  # up to the token that completed the stop string
        assert cut(text.loaded.tokenizer.decode(c["token_ids"][:-1]), stops) is None
    assert [c["finish_reason"] for c in out["choices"][:2]] == ["stop", "stop"]
    assert out["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in out["choices"])

    chunks = streamed(text, {**body, "stop": stops})
    for i, c in enumerate(out["choices"]):
        mine = [k for k in chunks if k["index"] == i]
        assert "".join(k["text"] for k in mine) == c["text"]
        assert [k["token_ids"] for k in mine if k["token_ids"]] and sum((k["token_ids"] for k in mine), []) == c["token_ids"]
        assert [k["finish_reason"] for k in mine if k["finish_reason"]] == [c["finish_reason"]] == [mine[-1]["finish_reason"]]


def test_a_single_stop_string_and_echo(text):
    body = {"prompt": "the cat", "max_tokens": 40, "seed": 5, "temperature": 0.9}
    free = text.post("/v1/completions", body)[1]["choices"][0]
    stop = middle(free["text"])
    out = text.post("/v1/completions", {**body, "stop": stop, "echo": True})[1]["choices"][0]
    assert out["text"] == "the cat" + cut(free["text"], [stop]) and out["finish_reason"] == "stop"
    chunks = streamed(text, {**body, "echo": True})
    assert chunks[0]["text"] == "the cat" and "".join(k["text"] for k in chunks) == "the cat" + free["text"]
    ids = text.loaded.tokenizer.encode("a dog")
    out = text.post("/v1/completions", {"prompt": ids, "max_tokens": 10, "seed": 5, "echo": True, "n": 2})[1]["choices"]
    assert all(c["text"].startswith("a dog") and c["text"] == "a dog" + text.loaded.tokenizer.decode(c["token_ids"]) for c in out)


BAD = [  # (fields, status, field)
    ({"stop": 5}, 400, "stop"),
    ({"stop": {"a": 1}}, 400, "stop"),
    ({"stop": ["a", 3]}, 400, "stop"),
    ({"stop": ["a", None]}, 400, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
    ({"stop": ""}, 422, "stop"),
    ({"stop": ["a", ""]}, 422, "stop"),
    ({"stop": "x" * 257}, 422, "stop"),
    ({"echo": "yes"}, 400, "echo"),
    ({"logprobs": 9}, 422, "logprobs"),
]


@pytest.mark.parametrize("fields, status, field", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_stop_and_echo_values_get_one_line_4xx(text, fields, status, field):
    got, body = text.post("/v1/completions", {"prompt": "a", "max_tokens": 2, **fields})
    assert got == status and body["error"]["field"] == field and "\n" not in body["error"]["message"], body
    assert field in body["error"]["message"]


def test_a_stopped_row_leaves_the_engine_and_frees_its_slot(trained):
    s = Served(trained / "checkpoints" / "last.ckpt", slots=1, max_queue=4)
    try:
        stopped_row_frees_its_slot(s)
    finally:
        s.stop()
