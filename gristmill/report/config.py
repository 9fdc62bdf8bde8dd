"""The report stage's config (pydantic only)."""

from __future__ import annotations

from pydantic import Field

from gristmill.core.config import Config


class ReportConfig(Config):
    """What goes into ``report.md``."""

    title: str | None = None
    """Heading of the report (None = "Gristmill run: <run name>")."""
    curve_rows: int = Field(12, ge=2)
    """Most rows in the training-curve tables (evenly spaced steps, the last one always included)."""
    max_sample_chars: int = Field(800, ge=20)
    """Samples longer than this many characters are cut (with a note)."""
