"""What one server allows and how it streams: the HTTP side's limits and the engine loop's, in one place (an
engine process gets its copy)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    name: str = "arseq"
    slots: int = 8  # rows decoding at once
    max_queue: int = 64
    max_new_tokens_limit: int = 4096
    timeout: float | None = 600.0
    max_body_bytes: int = 1 << 20
    stream_interval: float = 0.0  # seconds streamed tokens may wait to go out together (EngineLoop)
