"""Stop strings (OpenAI's `stop`): where a sample's text ends, found while its text streams.

A stop string can arrive split over tokens, and over the text deltas of a stream (`jobs.text_delta`), so each
sample has a `StopMatcher` fed its text delta by delta. It answers the text that is safe to send now and whether
a stop string was reached. Text that could still be the start of a stop string is held back until later text
decides it (vLLM's rule): what was sent is never taken back, and nothing at or past a stop string is ever sent.
The text is cut before the stop string (OpenAI leaves it out). Where several stop strings match, the one that
ends first wins, the longer of two ending together: the sample would have stopped there had its text come a
character at a time, so the answer does not depend on how the text was split into deltas (or tokens).
"""

from __future__ import annotations

from typing import Any, Sequence

from arseq.serve.jobs import text_delta, text_of


class StopMatcher:
    """One sample's text against its stop strings, delta by delta (`feed`), until one is reached."""

    def __init__(self, stops: Sequence[str]):
        if not stops or not all(stops):
            raise ValueError("stop strings must be a non-empty list of non-empty strings")
        self.stops = tuple(stops)
        self.longest = max(map(len, self.stops))
        self.held = ""  # the end of the text so far that could still begin a stop string
        self.stopped = False

    def feed(self, new: str) -> tuple[str, bool]:
        """(the text safe to emit now, whether a stop string was reached); after a stop, ("", True) forever."""
        if self.stopped:
            return "", True
        text = self.held + new  # `held` holds no whole stop string: any match ends in `new`
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped, self.held = True, ""
            return text[:cut], True
        keep = self._undecided(text)
        self.held = text[keep:]
        return text[:keep], False

    def flush(self) -> str:
        """The text held back, once the sample has ended without a stop string (nothing can complete one now)."""
        out, self.held = self.held, ""
        return out

    def _first_stop(self, text: str) -> int | None:
        """Where the stop string that ends first in `text` begins (None: none is in it)."""
        found = [(i + len(s), i) for s in self.stops if (i := text.find(s)) >= 0]
        return min(found)[1] if found else None

    def _undecided(self, text: str) -> int:
        """Where the longest end of `text` that begins some stop string starts (len(text): no end does)."""
        for i in range(max(0, len(text) - self.longest + 1), len(text)):
            tail = text[i:]
            if any(s.startswith(tail) for s in self.stops):
                return i
        return len(text)


class SampleText:
    """A sample's tokens as they come and its text so far; with stop strings, the tokens and text up to the first.

    Without stop strings a stream's text is decoded once per event (`take`), as many tokens as came. With them,
    each token's text goes through the matcher as it comes, so that the tokens kept are exactly those up to the
    one that completed the stop string (what `usage` counts and `token_ids` lists)."""

    def __init__(self, loaded: Any, stops: Sequence[str]):
        self.loaded = loaded
        self.tokens: list[int] = []
        self.offsets = (0, 0)  # where the decoded text stands (jobs.text_delta)
        self.matcher = StopMatcher(stops) if stops else None
        self.ready = ""  # with stop strings: text decided and not yet taken
        self.text = ""  # with stop strings: all the text decided

    @property
    def stopped(self) -> bool:
        """Whether the text reached a stop string."""
        return self.matcher is not None and self.matcher.stopped

    def add(self, tokens: list[int]) -> list[int]:
        """Keep the sample's new tokens, those up to a stop string; the ones kept (none once it has stopped)."""
        if self.matcher is None:
            self.tokens += tokens
            return tokens
        kept = []
        for token in tokens:
            if self.matcher.stopped:
                break
            self.tokens.append(token)
            kept.append(token)
            safe, _ = self.matcher.feed(self._delta())
            self.ready += safe
            self.text += safe
        return kept

    def take(self, end: bool = False) -> str:
        """The new text since the last call; `end`: the sample is over, so text held back is released too."""
        if self.matcher is None:
            return self._delta()
        rest = self.matcher.flush() if end else ""
        out, self.ready, self.text = self.ready + rest, "", self.text + rest
        return out

    def whole(self) -> str:
        """All the sample's text, once it is over (cut before the stop string where it reached one)."""
        if self.matcher is None:
            return text_of(self.loaded, self.tokens)
        self.take(end=True)
        return self.text

    def _delta(self) -> str:
        new, self.offsets = text_delta(self.loaded, self.tokens, self.offsets)
        return new
