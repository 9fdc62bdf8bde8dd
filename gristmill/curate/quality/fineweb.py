"""FineWeb's own quality rules (Penedo et al. 2024, "The FineWeb Datasets", section 3.5).

FineWeb added three line-based rules to the Gopher and C4 ones, chosen because they removed the
boilerplate and list-like pages that the older rules let through: too few lines ending in punctuation,
too many characters in repeated lines, too many very short lines. The released pipeline also drops text
with more line breaks than 0.3 per word (text broken into a line per word or two). Lines are the
non-empty lines, stripped; a line is short at 30 characters or fewer.
"""

from __future__ import annotations

from collections.abc import Iterator
from operator import methodcaller
from typing import ClassVar, Literal

from pydantic import Field

from gristmill.core.config import Config
from gristmill.curate.text import TERMINAL_PUNCT, Limit, SignalFilter, TextView, TextViews, fraction, repeated

_ENDS_A_SENTENCE = methodcaller("endswith", TERMINAL_PUNCT)


class FineWebStep(Config):
    """FineWeb's line rules. Defaults are the published FineWeb thresholds."""

    type: Literal["fineweb"] = "fineweb"
    """``fineweb``."""
    min_line_punct_ratio: float = Field(default=0.12, ge=0.0, le=1.0)
    """Drop documents where fewer than this share of lines end in terminal punctuation
    (``. ! ? " ' ” ’ …``; reason ``line_punct_ratio``)."""
    short_line_chars: int = Field(default=30, ge=0, le=100_000)
    """A line of this many characters or fewer counts as short."""
    max_short_line_ratio: float = Field(default=0.67, ge=0.0, le=1.0)
    """Drop documents where more than this share of lines are short (reason ``short_line_ratio``)."""
    max_dup_line_chars: float = Field(default=0.1, ge=0.0, le=1.0)
    """Drop documents where lines repeating an earlier line hold more than this share of the line
    characters (reason ``dup_line_chars``)."""
    max_newline_ratio: float = Field(default=0.3, ge=0.0, le=100.0)
    """Drop documents with more line breaks than this per word (reason ``newline_ratio``)."""
    store_signals: bool = True
    """Measure every signal of every document and store them in ``meta.quality``
    (``fineweb_line_punct_ratio`` ...), so thresholds can be applied again later without the text; false:
    stop at the first broken limit and store nothing."""

    REASON_KEYS: ClassVar[dict[str, str]] = {
        "line_punct_ratio": "min_line_punct_ratio", "short_line_ratio": "max_short_line_ratio / short_line_chars",
        "dup_line_chars": "max_dup_line_chars", "newline_ratio": "max_newline_ratio"}


class FineWebFilter(SignalFilter):
    """Drop documents by FineWeb's line rules (see the module docstring)."""

    name = "fineweb"

    def __init__(self, cfg: FineWebStep | None = None, views: TextViews | None = None) -> None:
        cfg = cfg if cfg is not None else FineWebStep()
        super().__init__(cfg.store_signals, views)
        self.short_line_chars = cfg.short_line_chars
        self.limits = {
            "fineweb_line_punct_ratio": Limit("line_punct_ratio", low=cfg.min_line_punct_ratio),
            "fineweb_short_line_ratio": Limit("short_line_ratio", high=cfg.max_short_line_ratio),
            "fineweb_dup_line_chars": Limit("dup_line_chars", high=cfg.max_dup_line_chars),
            "fineweb_newline_ratio": Limit("newline_ratio", high=cfg.max_newline_ratio),
        }

    def measure(self, view: TextView) -> Iterator[tuple[str, float]]:
        lines = view.lines
        n = len(lines)
        # Counted with C-level maps (True counts 1), not a Python generator per line.
        yield "fineweb_line_punct_ratio", fraction(sum(map(_ENDS_A_SENTENCE, lines)), n)
        yield "fineweb_short_line_ratio", fraction(sum(map(self.short_line_chars.__ge__, map(len, lines))), n)
        yield "fineweb_dup_line_chars", fraction(repeated(lines)[1], sum(map(len, lines)))
        yield "fineweb_newline_ratio", view.text.count("\n") / max(len(view.words), 1)
