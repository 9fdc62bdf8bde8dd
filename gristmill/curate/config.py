"""The prepare stage's config: the curation steps as a typed list, each step with its own keys.

Each step's config class lives in the module of the step itself (``LengthStep`` in ``quality/length.py``,
``MinHashStep`` in ``dedup/minhash.py`` ...); this module gathers them into one tagged union. None of
them imports numpy or a model: those come when a step is built.

A recipe names the kind of text it has (``prepare.kind``) and gets the steps and thresholds that fit it
(``curate/kinds.py``); the split into train and validation always comes last. To change a step, list the
steps you want; the kind still sets the keys you leave out:

```yaml
prepare:
  kind: short
  steps:
    - {type: clean_whitespace}
    - {type: length, min_words: 3}
    - {type: dedup}
```
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from gristmill.core.config import Config, tagged_union
from gristmill.curate import kinds
from gristmill.curate.decontam import DecontaminateStep
from gristmill.curate.dedup.exact import ExactDedupStep
from gristmill.curate.dedup.minhash import MinHashStep
from gristmill.curate.language import LanguageStep
from gristmill.curate.normalize import CleanWhitespaceStep, NormalizeUnicodeStep, StripGutenbergStep
from gristmill.curate.pii import PIIStep
from gristmill.curate.quality.c4 import C4Step
from gristmill.curate.quality.fineweb import FineWebStep
from gristmill.curate.quality.gopher import GopherQualityStep, GopherRepetitionStep
from gristmill.curate.quality.length import LengthStep
from gristmill.data.config import ExecutorOptions

__all__ = ["STEP_CONFIGS", "AnyStep", "PrepareConfig", "default_steps", "reason_key"]

STEP_CONFIGS = (StripGutenbergStep, NormalizeUnicodeStep, CleanWhitespaceStep, LengthStep, LanguageStep,
                GopherQualityStep, GopherRepetitionStep, C4Step, FineWebStep, PIIStep, ExactDedupStep,
                MinHashStep, DecontaminateStep)
AnyStep = tagged_union(*STEP_CONFIGS)
BY_TYPE: dict[str, type[Config]] = {c.model_fields["type"].default: c for c in STEP_CONFIGS}

Kind = Literal["general", "web", "books", "encyclopedia", "short"]


def default_steps(kind: str = "general") -> list[Config]:
    """The steps a kind runs when a recipe lists none, with the kind's keys set."""
    return [BY_TYPE[t].model_validate({"type": t, **kinds.SETTINGS[kind].get(t, {})}) for t in kinds.STEPS[kind]]


def reason_key(step_cfg: Config, reason: str) -> str | None:
    """The key(s) of a step's config that decide a drop reason (``min_chars`` for ``too_short``), or None."""
    keys: dict[str, str] = getattr(type(step_cfg), "REASON_KEYS", {})
    if reason in keys:
        return keys[reason]
    return next((k for prefix, k in keys.items() if prefix.endswith("_") and reason.startswith(prefix)), None)


class PrepareConfig(ExecutorOptions):
    """How documents are cleaned, filtered, deduplicated and split: ``steps`` run in order, then the split."""

    kind: Kind = Field("general", description=(
        "The kind of text: it decides the steps run when ``steps`` is left out, and the thresholds of the "
        "steps it knows (the keys a recipe sets win). " + kinds.describe() + "."))
    steps: list[AnyStep] = Field(default_factory=default_steps)
    """The curation steps, in order; each is ``{type: <step>, ...its keys}``. Types: ``strip_gutenberg``,
    ``normalize_unicode``, ``clean_whitespace``, ``length``, ``language``, ``gopher_quality``,
    ``gopher_repetition``, ``c4``, ``fineweb``, ``pii``, ``dedup`` (exact), ``minhash`` (near duplicates),
    ``decontaminate``. Left out: the steps of ``kind``. Keys a step leaves out take the kind's values, then
    the step's defaults."""
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Share of documents held out for validation. The split is decided by a hash of each document's id,
    so a document keeps its split whatever else is in the corpus, and across run seeds."""
    workers: int | None = Field(None, ge=1, le=4096)
    """Processes (or Ray tasks) running the leading steps that judge each document alone (cleaning,
    length, language, quality, PII), one collect shard each; None: one per CPU core (input under 16 MB
    is then run in this process). Deduplication and decontamination run after them in one process. The
    output is the same bytes for any number. ``--workers N`` on the command line sets it."""

    _evaluate_files: tuple[list[str], list[str]] = PrivateAttr(default=([], []))

    def link_evaluate(self, heldout_files: list[str], tasks: list[str]) -> None:
        """Take note of the evaluate section's held-out files and task files (locations as the recipe
        writes them), for the decontaminate step's ``from_evaluate``; the recipe calls this when it is
        loaded. Not a key of this section: what they hold enters prepare's cache key as input files."""
        self._evaluate_files = (list(heldout_files), list(tasks))

    @property
    def evaluate_files(self) -> tuple[list[str], list[str]]:
        """``(evaluate.heldout_files, evaluate.tasks)`` of the recipe this section is in (empty lists when
        it stands alone)."""
        return self._evaluate_files

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        """Fill ``steps`` from the kind, and the keys a listed step leaves out from the kind's settings."""
        if not isinstance(data, dict):
            return data
        kind = data.get("kind", "general")
        if kind not in kinds.STEPS:
            return data  # the Literal reports it
        settings = kinds.SETTINGS[kind]
        data = dict(data)
        if "steps" not in data:
            data["steps"] = [{"type": t, **settings.get(t, {})} for t in kinds.STEPS[kind]]
        elif isinstance(data["steps"], list):
            data["steps"] = [{**settings.get(s.get("type"), {}), **s} if isinstance(s, dict) else s
                             for s in data["steps"]]
        return data

    @field_validator("steps")
    @classmethod
    def _unique(cls, steps: list[Config]) -> list[Config]:
        types = [s.type for s in steps]
        for t in types:
            if types.count(t) > 1:
                raise ValueError(f"step type '{t}' is listed twice; list each step once")
        return steps
