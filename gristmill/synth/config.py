"""The synth stage's config."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from gristmill.config import Config
from gristmill.synth.tasks import TASKS


class SynthConfig(Config):
    """Synthetic chat data made from the prepared documents; every answer is taken from the text."""

    tasks: list[str] = ["continue", "qa", "source", "speaker"]
    """Task generators to run (``continue``, ``qa``, ``source``, ``speaker``); each skips documents it
    does not fit (``qa`` needs an encyclopedic article, ``speaker`` a play)."""
    examples_per_document: int = Field(4, ge=1)
    """At most this many examples per task from one document."""
    chars_per_example: int = Field(2000, ge=1)
    """One example per task for every this many characters of a document (at least one, at most
    ``examples_per_document``), so long plays give more examples than short articles."""
    max_examples: int | None = Field(None, ge=1)
    """Keep at most this many train examples (a seeded random subset); None keeps all."""
    max_val_examples: int | None = Field(None, ge=1)
    """Keep at most this many val examples; None keeps all."""
    min_passage_chars: int = Field(200, ge=1)
    """Shortest passage shown in a prompt (``continue``, ``source``), in characters."""
    max_passage_chars: int = Field(500, ge=1)
    """Longest passage or speech shown in a prompt, in characters (cut back to a sentence end)."""
    continue_chars: int = Field(250, ge=1)
    """Length of the true continuation the assistant gives (``continue``), in characters."""
    lead_chars: int = Field(400, ge=1)
    """Longest answer made from an article's lead sentences (``qa``), in characters."""
    min_speech_chars: int = Field(40, ge=1)
    """Shortest speech used by ``speaker``, in characters."""
    min_prompt_chars: int = Field(10, ge=1)
    """Reject examples whose user text is shorter than this."""
    max_prompt_chars: int = Field(1500, ge=1)
    """Reject examples whose user text is longer than this."""
    min_answer_chars: int = Field(2, ge=1)
    """Reject examples whose assistant text is shorter than this."""
    max_answer_chars: int = Field(1000, ge=1)
    """Reject examples whose assistant text is longer than this."""
    pii_filter: bool = True
    """Reject examples with e-mail addresses, phone numbers or IP addresses (reason ``pii``)."""
    system_prompt: str | None = None
    """System message put first in every conversation; None for none."""
    encyclopedic_readers: list[str] = ["mediawiki"]
    """Collect readers whose documents are encyclopedia articles (``qa``; ``source`` says "article")."""
    play_readers: list[str] = ["files"]
    """Collect readers whose documents may be plays (``speaker``; titles from the text's heading line)."""

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: list[str]) -> list[str]:
        unknown = [t for t in v if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r}; known tasks: {', '.join(sorted(TASKS))}")
        if not v:
            raise ValueError("list at least one task")
        return v

    @field_validator("system_prompt")
    @classmethod
    def _blank_system(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("use null for no system prompt, not a blank string")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> SynthConfig:
        for lo, hi in (
            ("min_passage_chars", "max_passage_chars"),
            ("min_prompt_chars", "max_prompt_chars"),
            ("min_answer_chars", "max_answer_chars"),
        ):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} ({getattr(self, lo)}) is larger than {hi} ({getattr(self, hi)})")
        return self
