"""From a prepare config to its list of steps: one explicit table, config class -> step.

Steps are built here, not in the config modules, so the heavy parts (numpy, the language model) load only
when a stage runs. The quality filters built for one run share one :class:`~gristmill.curate.text.TextViews`,
so a document is split into words, lines and paragraphs once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gristmill.curate import config as c
from gristmill.curate.decontam import Decontaminate
from gristmill.curate.dedup.exact import ExactDedup, UnitDedup
from gristmill.curate.dedup.minhash import MinHashDedup
from gristmill.curate.language import LanguageFilter
from gristmill.curate.normalize import CleanWhitespace, NormalizeUnicode, StripGutenberg
from gristmill.curate.pii import RedactPII
from gristmill.curate.quality.c4 import C4Filter
from gristmill.curate.quality.fineweb import FineWebFilter
from gristmill.curate.quality.gopher import GopherQualityFilter, GopherRepetitionFilter
from gristmill.curate.quality.length import LengthFilter
from gristmill.curate.split import AssignSplit
from gristmill.curate.text import TextViews
from gristmill.data.step import Step


class BuildContext:
    """What some steps need beyond their own config: the shared text views, the run's validation share,
    the held-out texts for decontamination (read by the stage, which knows the files), and the scratch
    folder where the steps that read their stream twice park documents (None: the system's temporary
    folder)."""

    def __init__(self, val_fraction: float, held_out: Iterable[tuple[str, str]] = (),
                 work_dir: Path | None = None) -> None:
        self.views = TextViews()
        self.val_fraction = val_fraction
        self.held_out = held_out
        self.work_dir = work_dir


BUILDERS: dict[type, Callable[[Any, BuildContext], Step]] = {
    c.StripGutenbergStep: lambda s, b: StripGutenberg(),
    c.NormalizeUnicodeStep: lambda s, b: NormalizeUnicode(s.form),
    c.CleanWhitespaceStep: lambda s, b: CleanWhitespace(),
    c.LengthStep: lambda s, b: LengthFilter(s.min_chars, s.max_chars, s.min_words),
    c.LanguageStep: lambda s, b: LanguageFilter(s),
    c.GopherQualityStep: lambda s, b: GopherQualityFilter(s, b.views),
    c.GopherRepetitionStep: lambda s, b: GopherRepetitionFilter(s, b.views),
    c.C4Step: lambda s, b: C4Filter(s),
    c.FineWebStep: lambda s, b: FineWebFilter(s, b.views),
    c.PIIStep: lambda s, b: RedactPII(s),
    c.ExactDedupStep: lambda s, b: ExactDedup() if s.unit == "document" else UnitDedup(s.unit, s.min_chars),
    c.MinHashStep: lambda s, b: MinHashDedup(s, b.work_dir),
    c.DecontaminateStep: lambda s, b: Decontaminate(s, b.val_fraction, b.held_out, b.work_dir),
}


def build_steps(cfg: c.PrepareConfig, held_out: Iterable[tuple[str, str]] = (),
                work_dir: Path | None = None) -> list[Step]:
    """The step list a config asks for, in order, with the split last. ``held_out``: ``(label, text)``
    pairs the decontamination step checks training documents against (besides the validation split);
    ``work_dir``: scratch folder for the steps that spool documents to disk."""
    ctx = BuildContext(cfg.val_fraction, held_out, work_dir)
    return [BUILDERS[type(s)](s, ctx) for s in cfg.steps] + [AssignSplit(cfg.val_fraction)]
