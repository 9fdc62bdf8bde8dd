"""What every synthetic-data generator shares: the draft it yields and the context it is handed.

A generator is a function ``fn(doc, tc) -> Iterable[Draft]``: it gets one document and a
:class:`TaskContext` (its own config, the synth config, a seeded ``rng``, how many examples to aim for,
the document's display title) and yields draft conversations; it may yield fewer, or none when the
document does not fit (then it calls ``tc.skip(reason)`` so the stage can say why). Filtering, ids and
writing happen in the stage, so a new source of conversations (a teacher model, self-instruct) is one more
generator config and function.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gristmill.formats.document import Document


@dataclass
class Draft:
    """A candidate conversation (user and assistant turns, no system prompt) and the documents it used."""

    task: str
    messages: list[dict[str, str]]
    source_ids: list[str]
    finish_reason: str | None = None
    """Why the model that wrote the answer stopped (``stop``, ``length`` as OpenAI-compatible servers say);
    None for an answer taken from the text. Model-written answers get the refusal and truncation checks."""
    grounded: bool = False
    """Whether the answer claims to come from the source document: the groundedness check then measures
    how much of it the document holds."""

    @classmethod
    def single(cls, task: str, prompt: str, answer: str, doc: Document, *, grounded: bool = False) -> Draft:
        return cls(
            task, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], [doc.id],
            grounded=grounded,
        )

    @property
    def prompt(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")

    @property
    def answer(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] == "assistant")


@dataclass
class TaskContext:
    """What a generator gets besides the document."""

    gen: Any
    """This generator's own config (``ContinueGenerator``, ``QAGenerator`` ...)."""
    cfg: Any
    """The whole ``SynthConfig`` (document kinds, limits shared by every generator)."""
    rng: random.Random
    """Seeded from the run seed, the split, the task and the document id: reproducible in any order."""
    n: int
    """How many examples to aim for from this document."""
    title: str | None
    """The work or article title to show (see :func:`display_title`)."""
    extra: dict[str, object] = field(default_factory=dict)
    """Room for resources later generators need (e.g. a teacher model), set by the stage."""
    skipped: str | None = None
    """Why the document does not fit this generator (set with :meth:`skip`); None when it does. The stage
    counts documents seen, usable and skipped per reason for each generator."""

    def skip(self, reason: str) -> None:
        """Say that the document does not fit this generator (e.g. ``not_a_play``), before yielding nothing."""
        self.skipped = reason


Generator = Callable[[Document, TaskContext], Iterable[Draft]]
