"""The collect stage's config: a list of named sources, each read by the reader its ``type`` names.

Each source type has its own config class with only the keys that type reads, so ``gristmill show``
prints a wiki source with ``skip_sections`` and a files source without it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from gristmill.core.config import Config, tagged_union

DEFAULT_SKIP_SECTIONS = ("See also", "References", "External links", "Further reading", "Notes", "Footnotes",
                         "Bibliography", "Sources", "Citations", "Notes and references")


class SourceConfig(Config):
    """What every source has: a name, a location, a licence and an optional cap."""

    name: str = Field(min_length=1, pattern=r"^[^\x00-\x1f]+$")
    """Short unique name; it is recorded on every document (``source``) and goes into document ids."""
    path: str = Field(min_length=1)
    """A file, a folder (every file below it), a glob (``texts/*.txt``) or ``pkg://package/sub/path``."""
    license: str | None = None
    """Licence of the source's text, recorded in every document's provenance."""
    limit: int | None = Field(default=None, ge=1)
    """At most this many documents from this source (quarantined records do not count); None: all."""


class FilesSource(SourceConfig):
    """Plain files: ``.txt``/``.md`` are one document each, ``.jsonl`` one document per line."""

    type: Literal["files"] = "files"
    """``files``: .txt/.md (one document per file) and .jsonl (one per line)."""
    text_field: str = Field("text", min_length=1)
    """For .jsonl files: the key that holds each record's text."""


class MediaWikiSource(SourceConfig):
    """MediaWiki XML dumps (``pages-articles*.xml[.bz2|.gz]``), one document per article."""

    type: Literal["mediawiki"]
    """``mediawiki``: XML dumps, plain or .bz2/.gz compressed, one document per article."""
    skip_sections: list[str] = list(DEFAULT_SKIP_SECTIONS)
    """Article sections left out, by heading (case-insensitive), with their subsections. The defaults are
    the link and citation lists at the end of an article; [] keeps all."""


SOURCE_CLASSES: dict[str, type[SourceConfig]] = {"files": FilesSource, "mediawiki": MediaWikiSource}
"""Source type -> its config class (the ``type`` key picks one; a source without ``type`` is ``files``)."""


AnySource = tagged_union(*SOURCE_CLASSES.values(), default="files")


def _source_type(v: Any) -> str:
    return v.get("type", "files") if isinstance(v, dict) else getattr(v, "type", "files")


class CollectConfig(Config):
    """Which sources to read into ``documents.jsonl``."""

    sources: list[AnySource] = []
    """The inputs, read in order; each becomes documents tagged with the source's name. Each has a
    ``type`` (default ``files``) that decides which other keys it takes."""

    @field_validator("sources", mode="before")
    @classmethod
    def _known_types(cls, v: Any) -> Any:
        # Checked before the union so that the error names the source and its path.
        for i, s in enumerate(v if isinstance(v, list) else []):
            if isinstance(s, dict) and _source_type(s) not in SOURCE_CLASSES:
                name, path = s.get("name", f"#{i}"), s.get("path", "?")
                raise ValueError(f"source '{name}' ({path}) has unknown type {_source_type(s)!r}; use one "
                                 f"of: {', '.join(SOURCE_CLASSES)}")
        return v

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for s in sources:
            if s.name in seen:
                raise ValueError(f"two sources are named '{s.name}'; give each source its own name")
            seen.add(s.name)
        return sources
