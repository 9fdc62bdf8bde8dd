"""From a prepare config to its list of steps: one explicit table, config class -> step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gristmill.curate import config as c
from gristmill.curate.dedup.exact import ExactDedup
from gristmill.curate.normalize import CleanWhitespace, NormalizeUnicode, StripGutenberg
from gristmill.curate.quality.length import LengthFilter
from gristmill.curate.split import AssignSplit
from gristmill.data.step import Step

BUILDERS: dict[type, Callable[[Any], Step]] = {
    c.StripGutenbergStep: lambda s: StripGutenberg(),
    c.NormalizeUnicodeStep: lambda s: NormalizeUnicode(s.form),
    c.CleanWhitespaceStep: lambda s: CleanWhitespace(),
    c.LengthStep: lambda s: LengthFilter(s.min_chars, s.max_chars, s.min_words),
    c.ExactDedupStep: lambda s: ExactDedup(),
}


def build_steps(cfg: c.PrepareConfig) -> list[Step]:
    """The step list a config asks for, in order, with the split last."""
    return [BUILDERS[type(s)](s) for s in cfg.steps] + [AssignSplit(cfg.val_fraction)]
