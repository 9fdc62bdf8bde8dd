"""The collect stage's config: a list of named sources, each read by one reader."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from gristmill.config import Config

SOURCE_TYPES = ("files", "mediawiki")
DEFAULT_SKIP_SECTIONS = ("See also", "References", "External links", "Further reading", "Notes", "Footnotes",
                         "Bibliography", "Sources", "Citations", "Notes and references")


class SourceConfig(Config):
    """One input: a file, folder, glob or ``pkg://`` path, and the reader that understands it."""

    name: str = Field(min_length=1)
    """Short unique name; it is recorded on every document (``source``) and goes into document ids."""
    path: str = Field(min_length=1)
    """A file, a folder (every file below it), a glob (``texts/*.txt``) or ``pkg://package/sub/path``."""
    type: Literal["files", "mediawiki"] = "files"
    """``files``: .txt/.md (one document per file) and .jsonl (one per line); ``mediawiki``: XML dumps,
    plain or .bz2/.gz compressed, one document per article."""
    text_field: str = "text"
    """For .jsonl files: the key that holds each record's text."""
    license: str | None = None
    """Licence of the source's text, recorded in every document's provenance."""
    limit: int | None = Field(default=None, ge=1)
    """At most this many documents from this source (quarantined records do not count); None: all."""
    skip_sections: list[str] = list(DEFAULT_SKIP_SECTIONS)
    """``mediawiki`` only: article sections left out, by heading (case-insensitive), with their
    subsections. The defaults are the link and citation lists at the end of an article; [] keeps all."""

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, v: object, info: ValidationInfo) -> object:
        # Checked here rather than by the Literal alone so that the error names the source and its path.
        if v not in SOURCE_TYPES:
            name, path = info.data.get("name", "?"), info.data.get("path", "?")
            raise ValueError(
                f"source '{name}' ({path}) has unknown type {v!r}; use one of: {', '.join(SOURCE_TYPES)}"
            )
        return v


class CollectConfig(Config):
    """Which sources to read into ``documents.jsonl``."""

    sources: list[SourceConfig] = []
    """The inputs, read in order; each becomes documents tagged with the source's name."""

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for s in sources:
            if s.name in seen:
                raise ValueError(f"two sources are named '{s.name}'; give each source its own name")
            seen.add(s.name)
        return sources
