"""Several models behind one server (`arseq serve --checkpoint words=... --checkpoint digits=...`): a request names
its model by `model` and gets what that model served alone gives; an unknown name is a 404 naming `model` and the
known names, a missing one a 400; `/v1/models`, `/v1/model?model=`, `/health` and `/metrics` per model; the CLI
refuses bad, repeated or missing names, and a PATH that does not load, in one line and exit 2."""

from __future__ import annotations

import json
import multiprocessing

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from serving import Served, engine_of, tiny_model, wait_for  # noqa: E402

from arseq.cli import main  # noqa: E402

TEXT_BODY = {"prompt": "the cat", "max_tokens": 20, "n": 2, "seed": 3, "temperature": 0.9}
IMAGE_BODY = {"num_samples": 2, "seed": 4, "conditions": {"label": "7"}}


@pytest.fixture(scope="module")
def ckpts(trained, tmp_path_factory):
    return {"words": trained / "checkpoints" / "last.ckpt", "digits": tiny_model("image", tmp_path_factory)}


@pytest.fixture(scope="module")
def pair(ckpts):
    s = Served(ckpts, process=True, slots=2)  # an engine process each, as `arseq serve` runs them
    yield s
    s.stop()


def test_each_request_gets_what_its_model_served_alone_gives(pair, ckpts):
    alone = {}
    for name, ckpt in ckpts.items():
        s = Served(ckpt, slots=2)
        try:  # one model: `model` is not checked, whatever an OpenAI client sends
            alone[name] = (
                s.post("/v1/completions", {**TEXT_BODY, "model": "gpt-3.5-turbo"})
                if name == "words"
                else s.post("/v1/generate", {**IMAGE_BODY, "model": 1})
            )
            assert s.get("/v1/model?model=anything")[0] == 200
        finally:
            s.stop()
    status, words = pair.post("/v1/completions", {**TEXT_BODY, "model": "words"})
    assert status == 200 and words["model"] == "words"
    assert [c["token_ids"] for c in words["choices"]] == [c["token_ids"] for c in alone["words"][1]["choices"]]
    status, digits = pair.post("/v1/generate", {**IMAGE_BODY, "model": "digits"})
    assert status == 200 and digits["model"] == "digits" and digits["modality"] == "image"
    assert digits["files"] == alone["digits"][1]["files"] and [f["name"] for f in digits["files"]].count("grid.png") == 1


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/generate"])
def test_an_unknown_or_missing_model_is_a_one_line_4xx_naming_model(pair, path):
    status, body = pair.post(path, {"model": "bach", "max_new_tokens": 2} if path == "/v1/generate" else {"model": "bach", "max_tokens": 2})
    assert status == 404 and body["error"]["field"] == "model"
    assert "'bach'" in body["error"]["message"] and "words, digits" in body["error"]["message"] and "\n" not in body["error"]["message"]
    status, body = pair.post(path, {"num_samples": 1} if path == "/v1/generate" else {"max_tokens": 2})
    assert status == 400 and body["error"]["field"] == "model" and "words, digits" in body["error"]["message"]
    status, body = pair.post(path, {"model": ["words"]})
    assert status == 400 and body["error"]["field"] == "model"
    assert pair.post(path, {"model": "words"})[0] == 200  # and the server goes on


def test_models_model_health_and_metrics_per_model(pair):
    status, listed = pair.get("/v1/models")
    assert status == 200 and json.loads(listed) == {
        "object": "list",
        "data": [{"id": "words", "object": "model", "owned_by": "arseq"}, {"id": "digits", "object": "model", "owned_by": "arseq"}],
    }
    schemas = {name: json.loads(pair.get(f"/v1/model?model={name}")[1]) for name in ("words", "digits")}
    assert [(s["id"], s["modality"], s["prompt"]) for s in schemas.values()] == [("words", "text", "text"), ("digits", "image", None)]
    assert schemas["digits"]["conditions"]["label"] == [str(d) for d in range(10)] and schemas["words"]["conditions"] == {}
    status, body = pair.get("/v1/model?model=bach")
    assert status == 404 and json.loads(body)["error"]["field"] == "model"
    assert pair.get("/v1/model")[0] == 400

    words, digits = 'model="words"', 'model="digits"'
    before = {m: pair.metric("arseq_generated_tokens_total", m) for m in (words, digits)}
    out = pair.post("/v1/completions", {"model": "words", "prompt": "a", "max_tokens": 5, "temperature": 0})[1]
    n = sum(len(c["token_ids"]) for c in out["choices"])
    wait_for(lambda: pair.metric("arseq_generated_tokens_total", words) - before[words] == n)
    assert pair.metric("arseq_generated_tokens_total", digits) == before[digits]
    assert pair.metric("arseq_rows_active", digits) == 0 and f"arseq_rows_active{{{digits}}}" in pair.get("/metrics")[1].decode()

    status, health = pair.get("/health")
    health = json.loads(health)
    assert status == 200 and health["status"] == "ok" and set(health["models"]) == {"words", "digits"}
    assert all(m["status"] == "ok" for m in health["models"].values())


@pytest.mark.parametrize(
    "checkpoints, flags, says",
    [
        (["a b=x"], [], "NAME of 1 to 64"),
        (["a="], [], "NAME of 1 to 64"),  # no PATH
        (["m" * 65 + "=x"], [], "NAME of 1 to 64"),
        (["a=x", "a=y"], [], "'a' is given twice"),
        (["x", "b=y"], [], "need a name each"),
        (["a=x"], ["--name", "z"], "--name"),
    ],
)
def test_bad_checkpoint_names_are_one_line_and_exit_2(checkpoints, flags, says, capsys):
    argv = ["serve", *[a for c in checkpoints for a in ("--checkpoint", c)], *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and ("--checkpoint" in err[0] or "--name" in err[0]), err


def test_a_path_that_does_not_load_is_one_line_and_exit_2(ckpts, tmp_path, capsys):
    good = f"words={ckpts['words']}"
    assert main(["serve", "--checkpoint", good, "--checkpoint", f"lost={tmp_path / 'nothing.ckpt'}", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing.ckpt" in err[0] and "Traceback" not in err[0]


def test_an_engine_that_cannot_start_names_its_model_and_stops_those_started(ckpts):
    from dataclasses import replace

    from arseq.app.run_options import RunOptions
    from arseq.errors import DataError
    from arseq.serve.app import create_models_app

    before = set(multiprocessing.active_children())
    words, digits = engine_of(ckpts["words"], True, 2), engine_of(ckpts["digits"], True, 2)
    digits = (digits[0], replace(digits[1], run=RunOptions(device="cuda:7")))
    with pytest.raises(DataError, match="^model 'digits': .*cuda") as e:
        create_models_app({"words": words, "digits": digits})
    assert "\n" not in str(e.value)
    assert set(multiprocessing.active_children()) == before  # the words engine, started, was stopped


def test_a_config_lists_the_models_and_flags_override_it(ckpts, tmp_path, capsys):
    from arseq.serve import command

    config = tmp_path / "serve.yaml"
    config.write_text(f"checkpoint:\n  - words={ckpts['words']}\n  - digits={ckpts['digits']}\nslots: 3\n")
    args, models = command.parse_serve(["--config", str(config)])
    assert models == [("words", str(ckpts["words"])), ("digits", str(ckpts["digits"]))] and args.slots == 3
    args, models = command.parse_serve(["--config", str(config), "--checkpoint", f"mine={ckpts['digits']}"])
    assert models == [("mine", str(ckpts["digits"]))] and args.slots == 3
    config.write_text(f"checkpoint: [{ckpts['words']}, {ckpts['digits']}]\n")  # paths without names
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NAME=PATH" in err[0], err


def test_the_engines_start_at_once(ckpts):
    """Each engine is made while the others are: two that wait for each other both start (made one after the
    other, the first would wait alone and time out)."""
    import threading

    from arseq.serve.app import create_models_app

    both = threading.Barrier(2, timeout=20)
    engines = {}
    for name, ckpt in ckpts.items():
        loaded, make = engine_of(ckpt, False, 2)
        engines[name] = (loaded, lambda make=make: (both.wait(), make())[1])
    models = create_models_app(engines).state.models
    assert list(models.by_name) == ["words", "digits"]  # in the order given, whichever was ready first
    assert both.broken is False


def test_the_verb_starts_an_engine_process_per_named_checkpoint_with_the_same_settings(ckpts, monkeypatch):
    from arseq.serve import command, engine_process

    monkeypatch.setattr(engine_process, "usable_cores", lambda: 5)  # without --threads, the 4 cores the HTTP side leaves are shared
    flags = ["--checkpoint", f"words={ckpts['words']}", f"--checkpoint=digits={ckpts['digits']}", "--slots", "3"]
    assert command.named([str(ckpts["words"])], "mine") == [(None, str(ckpts["words"]))]  # one PATH: named as before
    models = command.build(*command.parse_serve(flags)).state.models
    try:
        assert [(name, m.settings.name, m.settings.slots, m.loop.spec.checkpoint, m.loop.spec.threads) for name, m in models.by_name.items()] == [
            ("words", "words", 3, str(ckpts["words"]), 2),
            ("digits", "digits", 3, str(ckpts["digits"]), 2),
        ]
        assert all(m.loop.process.is_alive() for m in models.by_name.values())
    finally:
        models.stop(0)
    assert not any(m.loop.process.is_alive() for m in models.by_name.values())
