"""Every raw teacher output on disk, and the budget that ends generation.

:class:`TeacherSession` sits between the generation recipes and a teacher backend (a local model or an HTTP
endpoint, :mod:`gristmill.synth.teacher`). It looks each conversation up in an :class:`OutputCache` first
(content-addressed: the teacher's identity, the messages and the sampling parameters), sends only the misses
to the backend in chunks, appends their outputs to the cache as they come, and counts samples, tokens and
seconds against the :class:`~gristmill.synth.config.TeacherBudget`. A re-run, or a run killed half-way,
regenerates nothing the cache holds. Torch-free: the backend is handed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Messages = list[dict[str, str]]


@dataclass
class Output:
    """One teacher reply."""

    text: str
    tokens: int
    """Generated tokens (as the teacher counts them)."""
    finish: str
    """``stop``, ``length``, or ``too_long`` (the prompt did not fit the teacher's context: nothing generated)."""


class Backend(Protocol):
    """What a teacher model offers the session."""

    identity: dict[str, Any]
    """What makes its outputs what they are (model hash or endpoint and name): part of every cache key."""
    chunk: int
    """How many prompts to hand it at once (enough to keep its batch full)."""

    def generate(self, conversations: Sequence[Messages], sampling: dict[str, Any]) -> list[Output]:
        """One reply per conversation (the assistant's next turn), in order."""
        ...

    def close(self) -> None:
        """Release the model or the HTTP client."""
        ...


def cache_key(identity: dict[str, Any], messages: Messages, sampling: dict[str, Any]) -> str:
    blob = json.dumps({"teacher": identity, "messages": messages, "sampling": sampling}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class OutputCache:
    """An append-only JSONL file of ``{"key", "text", "tokens", "finish"}``.

    Each batch of outputs is appended with one write and flushed to disk, so a killed run loses at most the
    batch in flight; a torn last line (killed mid-write) is ignored when the file is read back.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, Output] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        r = json.loads(line)
                        self.entries[r["key"]] = Output(r["text"], int(r["tokens"]), r["finish"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a killed run: that output is asked for again

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> Output | None:
        return self.entries.get(key)

    def add(self, items: list[tuple[str, Output]]) -> None:
        if not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps({"key": k, "text": o.text, "tokens": o.tokens, "finish": o.finish},
                                   ensure_ascii=False) + "\n" for k, o in items)
        # a previous run may have died mid-line: start on a fresh line so this batch parses
        torn = self.path.is_file() and self.path.stat().st_size > 0 and not self._ends_with_newline()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(("\n" if torn else "") + lines)
            f.flush()
            os.fsync(f.fileno())
        for k, o in items:
            self.entries[k] = o

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


@dataclass
class Usage:
    """What the session has counted (this run)."""

    samples: int = 0
    """Outputs handed to the recipes (cached or new)."""
    tokens: int = 0
    generated: int = 0
    """Outputs the teacher generated in this run."""
    generated_tokens: int = 0
    cached: int = 0
    """Outputs served from the cache."""
    seconds: float = 0.0
    """Time spent waiting for the teacher."""
    stopped_by: str | None = None
    """The budget limit that ended generation (``max_samples``, ``max_tokens``, ``max_seconds``), or None."""
    by_purpose: dict[str, int] = field(default_factory=dict)


class TeacherSession:
    """Cached, budgeted access to a teacher: :meth:`chat` returns one :class:`Output` per conversation, or None for
    those left unasked because the budget ran out (and for every later call)."""

    def __init__(self, backend: Backend, cache: OutputCache, sampling: dict[str, Any], budget: Any,
                 line_tokens: int | None = None) -> None:
        self.backend, self.cache, self.sampling, self.budget = backend, cache, dict(sampling), budget
        self.line_tokens = line_tokens or sampling["max_new_tokens"]
        """Token limit of replies whose first line alone is used (:meth:`lines`)."""
        self.usage = Usage()
        self.started = time.monotonic()

    def _limit(self) -> str | None:
        b, u = self.budget, self.usage
        if b.max_samples is not None and u.samples >= b.max_samples:
            return "max_samples"
        if b.max_tokens is not None and u.tokens >= b.max_tokens:
            return "max_tokens"
        if b.max_seconds is not None and time.monotonic() - self.started >= b.max_seconds:
            return "max_seconds"
        return None

    @property
    def exhausted(self) -> bool:
        if self.usage.stopped_by is None:
            self.usage.stopped_by = self._limit()
        return self.usage.stopped_by is not None

    def chat(self, conversations: Sequence[Messages], purpose: str = "chat",
             overrides: dict[str, Any] | None = None) -> list[Output | None]:
        """The teacher's reply to each conversation (empty text when the prompt did not fit), in order.

        Replies are accounted in order, cached ones included, so the same budget cuts at the same
        conversation on every run. ``overrides`` changes sampling keys for this call (the judge is greedy).
        """
        sampling = {**self.sampling, **(overrides or {})}
        keys = [cache_key(self.backend.identity, list(c), sampling) for c in conversations]
        out: list[Output | None] = [None] * len(conversations)
        i = 0
        while i < len(conversations) and not self.exhausted:
            room = (self.budget.max_samples - self.usage.samples) if self.budget.max_samples is not None else None
            # the window: the next conversations up to one chunk of misses (and no more than the budget's room)
            j, misses = i, {}
            while j < len(conversations) and (room is None or j - i < room):
                if keys[j] not in self.cache and keys[j] not in misses:
                    if len(misses) == self.backend.chunk:
                        break
                    misses[keys[j]] = j
                j += 1
            if misses:
                t = time.monotonic()
                outputs = self.backend.generate([conversations[k] for k in misses.values()], sampling)
                self.usage.seconds += time.monotonic() - t
                self.cache.add([(k, o) for k, o in zip(misses, outputs, strict=True) if o.finish != "too_long"])
                fresh = dict(zip(misses, outputs, strict=True))
                self.usage.generated += len(outputs)
                self.usage.generated_tokens += sum(o.tokens for o in outputs)
            else:
                fresh = {}
            for k in range(i, j):
                if self._limit() in ("max_samples", "max_tokens"):
                    self.usage.stopped_by = self._limit()
                    return out
                o = self.cache.get(keys[k]) or fresh[keys[k]]
                if keys[k] not in fresh:
                    self.usage.cached += 1
                out[k] = o
                self.usage.samples += 1
                self.usage.tokens += o.tokens
                self.usage.by_purpose[purpose] = self.usage.by_purpose.get(purpose, 0) + 1
            i = j
        return out

    def lines(self, conversations: Sequence[Messages], purpose: str) -> list[Output | None]:
        """:meth:`chat` for replies of which only the first line is used (at most ``line_tokens``)."""
        return self.chat(conversations, purpose,
                         {"max_new_tokens": min(self.line_tokens, self.sampling["max_new_tokens"])})

    def stats(self) -> dict[str, Any]:
        u = self.usage
        return {"identity": self.backend.identity, "samples": u.samples, "tokens": u.tokens,
                "generated": u.generated, "generated_tokens": u.generated_tokens, "cached": u.cached,
                "seconds": round(u.seconds, 2),
                "tokens_per_second": round(u.generated_tokens / u.seconds, 1) if u.seconds > 0 else None,
                "stopped_by": u.stopped_by, "samples_by_purpose": dict(sorted(u.by_purpose.items())),
                "cache": self.cache.path.name}
