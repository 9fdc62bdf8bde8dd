"""The synth stage's config: the generators as a typed list, each with its own keys, and the limits every
draft must pass."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from gristmill.core.config import Config, tagged_union


class _Passages(Config):
    min_passage_chars: int = Field(200, ge=1)
    """Shortest passage shown in a prompt, in characters."""
    max_passage_chars: int = Field(500, ge=1)
    """Longest passage shown in a prompt, in characters (cut back to a sentence end)."""

    @model_validator(mode="after")
    def _ordered(self) -> _Passages:
        if self.min_passage_chars > self.max_passage_chars:
            raise ValueError(f"min_passage_chars ({self.min_passage_chars}) is larger than max_passage_chars "
                             f"({self.max_passage_chars})")
        return self


class ContinueGenerator(_Passages):
    """A passage, then the text that truly follows it in the document."""

    type: Literal["continue"]
    """``continue``."""
    continue_chars: int = Field(250, ge=1)
    """Length of the true continuation the assistant gives, in characters."""


class QAGenerator(Config):
    """For encyclopedic documents: a question about the title, answered with the article's lead sentences."""

    type: Literal["qa"]
    """``qa``."""
    lead_chars: int = Field(400, ge=1)
    """Longest answer made from an article's lead sentences, in characters."""


class SourceGenerator(_Passages):
    """A passage from inside the document; the answer is the work's or article's title."""

    type: Literal["source"]
    """``source``."""
    answer: Literal["sentence", "bare"] = "sentence"
    """``sentence``: a whole sentence naming the title (e.g. ``This passage is from the work "Hamlet".``);
    ``bare``: the title alone (fine-tuning on bare names makes a chat model answer in names)."""


class SpeakerGenerator(Config):
    """For plays: a speech, and the character who speaks it (the name printed above it)."""

    type: Literal["speaker"]
    """``speaker``."""
    answer: Literal["sentence", "bare"] = "sentence"
    """``sentence``: a whole sentence naming the speaker (e.g. ``These lines are spoken by HAMLET.``);
    ``bare``: the name alone."""
    max_passage_chars: int = Field(500, ge=1)
    """Longest speech shown in a prompt, in characters (cut back to a sentence end)."""
    min_speech_chars: int = Field(40, ge=1)
    """Shortest speech used, in characters."""


GENERATOR_CONFIGS = (ContinueGenerator, QAGenerator, SourceGenerator, SpeakerGenerator)
AnyGenerator = tagged_union(*GENERATOR_CONFIGS)


def default_generators() -> list[Config]:
    return [ContinueGenerator(type="continue"), QAGenerator(type="qa"), SourceGenerator(type="source"),
            SpeakerGenerator(type="speaker")]


class SynthConfig(Config):
    """Synthetic chat data made from the prepared documents; every answer is taken from the text."""

    generators: list[AnyGenerator] = Field(default_factory=default_generators)
    """The generators to run, each ``{type: <generator>, ...its keys}``: ``continue``, ``qa``, ``source``,
    ``speaker``. Each skips documents it does not fit (``qa`` needs an encyclopedic article, ``speaker``
    a play)."""
    examples_per_document: int = Field(4, ge=1)
    """At most this many examples per generator from one document."""
    chars_per_example: int = Field(2000, ge=1)
    """One example per generator for every this many characters of a document (at least one, at most
    ``examples_per_document``), so long plays give more examples than short articles."""
    max_examples: int | None = Field(None, ge=1)
    """Keep at most this many train examples (a seeded random subset); None keeps all."""
    max_val_examples: int | None = Field(None, ge=1)
    """Keep at most this many val examples; None keeps all."""
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

    @field_validator("generators")
    @classmethod
    def _generators(cls, v: list[Config]) -> list[Config]:
        if not v:
            raise ValueError("list at least one generator")
        types = [g.type for g in v]
        for t in types:
            if types.count(t) > 1:
                raise ValueError(f"generator '{t}' is listed twice; list each generator once")
        return v

    @field_validator("system_prompt")
    @classmethod
    def _blank_system(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("use null for no system prompt, not a blank string")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> SynthConfig:
        for lo, hi in (("min_prompt_chars", "max_prompt_chars"), ("min_answer_chars", "max_answer_chars")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} ({getattr(self, lo)}) is larger than {hi} ({getattr(self, hi)})")
        return self
