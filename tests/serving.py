"""Helpers for the server tests: tiny models of every built-in modality, a server on a free loopback port in a
thread, and a small HTTP client (JSON and server-sent events) on the standard library."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from arseq.cli import main

SMOKE = {
    "seed": 3,
    "data": {"val_fraction": 0.2, "block_size": 64, "batch_size": 4},
    "model": {"n_layer": 1, "n_head": 2, "d_model": 32},
    "optim": {"lr": 3.0e-3, "min_lr": 3.0e-4, "warmup_steps": 2},
    "trainer": {
        "max_steps": 4,
        "val_check_interval": 4,
        "check_val_every_n_epoch": None,
        "limit_val_batches": 1,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
    },
}


_TRAINED: dict[str, Path] = {}  # shared by the test modules of one session


def tiny_model(name: str, tmp_path_factory: Any) -> Path:
    """A tiny model of a built-in modality, trained once per test session (see `train_tiny`)."""
    if name not in _TRAINED:
        _TRAINED[name] = train_tiny(name, tmp_path_factory.mktemp(f"serve_{name}"))
    return _TRAINED[name]


def train_tiny(name: str, root: Path, settings: dict[str, Any] | None = None) -> Path:
    """Train a tiny (untrained, really: 4 steps) model of a built-in modality, with conditions where it has them:
    music (key, meter: five chorales), image (the digit), protein (a tag in each FASTA header). `settings`: settings
    of the config's `data:` over the modality's (`{"fim_rate": 0.5}`: a model that infills)."""
    data = root / "data"
    data.mkdir(parents=True)
    config: dict[str, Any] = {**SMOKE, "modality": {"name": name}, "trainer": {**SMOKE["trainer"], "default_root_dir": str(root / "runs")}}
    if name == "music":
        from arseq.modalities.music import MusicModality

        demo = MusicModality().demo_config(data)  # five chorales: several keys and meters
        config["modality"] = {"name": "music", **demo["modality"]}
        config["data"] = {**SMOKE["data"], **demo["data"]}
    elif name == "image":
        config["modality"] = {"name": "image", "mode": "L", "size": 8, "patch_size": 1, "codebook_size": 17}
        config["data"] = {**SMOKE["data"], "source": "digits", "block_size": 80}
    elif name == "protein":
        records = [f">p{i} {('polyA', 'polyW')[i % 2]}\nM{'AW'[i % 2] * (10 + i % 7)}K" for i in range(40)]
        (data / "p.fasta").write_text("\n".join(records) + "\n")
        config["modality"] = {"name": "protein", "deduplicate": False}
        config["data"] = {**SMOKE["data"], "paths": str(data / "p.fasta"), "block_size": 32}
    else:
        raise ValueError(name)
    config["data"] = {**config["data"], **(settings or {})}
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(root / "c.yaml")]) == 0
    return next((root / "runs").rglob("last.ckpt"))


def engine_of(checkpoint: Path, process: bool, slots: int) -> tuple[Any, Any]:
    """(loaded, engine) for `create_app`: a function that makes an Engine, or (`process`) an engine process's spec."""
    from arseq.app import generation
    from arseq.artifacts import checkpoint as ck

    loaded = ck.load(checkpoint)
    generation.prepare_model(loaded, generation.RunOptions(device="cpu"))
    if process:
        from arseq.serve.engine_process import EngineSpec

        return loaded, EngineSpec(str(checkpoint), None, False, generation.RunOptions(device="cpu"), threads=1)

    def make_engine() -> Any:
        from arseq.decode import Engine

        return Engine(loaded.model, slots=slots, compile="off", pad_id=loaded.tokenizer.pad_id)

    return loaded, make_engine


class Served:
    """A server for `checkpoint` (or several models: {name: checkpoint}) on 127.0.0.1 and a free port, in a thread;
    `stop()` shuts it down. `process`: each engine in a process of its own, as `arseq serve` runs it (else in a
    thread of this one). `loaded`: the model (one), or {name: model}."""

    def __init__(self, checkpoint: Path | dict[str, Path], process: bool = False, **settings: Any):
        import uvicorn

        from arseq.serve.app import create_models_app
        from arseq.serve.settings import Settings

        slots = settings.get("slots", 4)
        named = checkpoint if isinstance(checkpoint, dict) else {settings.pop("name", "tiny"): checkpoint}
        engines = {name: engine_of(path, process, slots) for name, path in named.items()}
        self.loaded = {name: loaded for name, (loaded, _) in engines.items()}
        if not isinstance(checkpoint, dict):
            self.loaded = next(iter(self.loaded.values()))
        self.app = create_models_app(engines, Settings(**{"slots": slots, **settings}))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    @property
    def state(self) -> Any:
        """The one model's server-side state (its schema, engine loop)."""
        return self.app.state.models.pick(None)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def conn(self, timeout: float = 60) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        c = self.conn()
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        c.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        c.close()
        return out

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        status, _, data = self.request("POST", path, body)
        return status, json.loads(data)

    def get(self, path: str) -> tuple[int, bytes]:
        status, _, data = self.request("GET", path)
        return status, data

    def stream(self, path: str, body: Any) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        c = self.conn()
        c.request("POST", path, body=json.dumps({**body, "stream": True}), headers={"Content-Type": "application/json"})
        return c, c.getresponse()

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of the series of metric `name` whose labels include each of `labels` ('reason="timeout"',
        'model="a",reason="timeout"'): over every model unless `labels` names one; 0 if there is none."""
        wanted = set(labels.split(",")) - {""}
        total = 0.0
        for line in self.get("/metrics")[1].decode().splitlines():
            series, _, value = line.rpartition(" ")
            metric, _, have = series.partition("{")
            if metric == name and wanted <= set(have.rstrip("}").split(",")):
                total += float(value)
        return total


def events(response: http.client.HTTPResponse) -> Iterator[tuple[str | None, str]]:
    """(event name, data) of each server-sent event, until the stream ends."""
    name, data = None, []
    for raw in response:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line and data:
            yield name, "\n".join(data)
            name, data = None, []


def wait_for(check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def middle(text: str) -> str:
    """Three characters from the middle of `text`: a stop string a seeded sample is known to hold."""
    return text[len(text) // 2 : len(text) // 2 + 3]


def stopped_row_frees_its_slot(s: Served) -> None:
    """A greedy sample (no EOS before its budget of 4000 tokens) stopped early: its row leaves the engine, so the
    engine generates a few tokens past the stop, not thousands, and the next request decodes."""
    greedy = {"prompt": "the", "temperature": 0}
    stop = middle(s.post("/v1/completions", {**greedy, "max_tokens": 30})[1]["choices"][0]["text"])
    before = s.metric("arseq_generated_tokens_total")
    status, out = s.post("/v1/completions", {**greedy, "max_tokens": 4000, "stop": [stop]})
    assert status == 200 and out["choices"][0]["finish_reason"] == "stop" and out["usage"]["completion_tokens"] < 30
    wait_for(lambda: s.metric("arseq_rows_active") == 0)
    assert s.metric("arseq_generated_tokens_total") - before < 500
    assert s.post("/v1/completions", {"prompt": "a", "max_tokens": 2})[0] == 200
