"""What every collect source has (name, licence, a cap and a sampling weight), and the path of those that
read files. Each source type's config derives from these; ``data/config.py`` gathers them into the
``collect.sources`` union.
"""

from __future__ import annotations

from pydantic import Field

from gristmill.core.config import Config

NAME_PATTERN = r"^[^\x00-\x1f]+$"


class SourceBase(Config):
    """Keys every source type has."""

    name: str = Field(min_length=1, pattern=NAME_PATTERN)
    """Short unique name; it is recorded on every document (``source``) and goes into document ids."""
    license: str | None = None
    """Licence of the source's text, recorded in every document's provenance (a record's own licence field,
    where a table source names one in ``license_field``, wins)."""
    limit: int | None = Field(default=None, ge=1)
    """At most this many documents from this source, the first ones in file order (quarantined records do
    not count); None: all. A source with a limit is read by one worker, in order, and stops early."""
    weight: float = Field(1.0, gt=0, le=1)
    """Share of the source's documents kept in the mix (0 < weight <= 1). Each document is kept when a hash
    of the run's seed and its id falls below the weight, so the same documents are chosen on every run and
    for any number of workers; the others are recorded in the quarantine as ``not_sampled`` (without text)."""


class SourceConfig(SourceBase):
    """A source that reads files."""

    path: str = Field(min_length=1)
    """A file, a folder (every file below it), a glob (``texts/*.txt``) or ``pkg://package/sub/path``."""
