"""The ``mediawiki`` reader: articles from MediaWiki XML dumps (``pages-articles*.xml[.bz2|.gz]``).

The dump is streamed with ``iterparse`` and each ``<page>`` is cleared once read, so memory stays flat
however large the dump. Tags are matched by local name, so any export schema version (``export-0.10``,
``export-0.11`` ...) works. Only articles (namespace 0) become documents; redirects, other namespaces
and pages with no text left after stripping the markup go to quarantine with their id and title.
"""

from __future__ import annotations

import bz2
import gzip
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

from mwparserfromhell.parser import ParserError

from gristmill.data.config import MediaWikiSource
from gristmill.data.readers.files import document_id, utc_iso
from gristmill.data.readers.wikitext import DROP_LINK_NAMESPACES, wikitext_to_text
from gristmill.data.step import StepStats
from gristmill.formats.document import Document, Provenance

MEDIA_NAMESPACE_KEYS = frozenset({"-2", "6", "14"})
"""Media, File and Category: links into these namespaces are not text (their names are localised)."""
URL_SAFE = "/:@!$&'()*+,;=-._~"
"""Characters MediaWiki leaves unescaped in page URLs."""


def _local(tag: str) -> str:
    """``{http://www.mediawiki.org/xml/export-0.10/}page`` -> ``page``."""
    return tag.rpartition("}")[2]


@contextmanager
def open_dump(path: Path) -> Iterator[IO[bytes]]:
    """Open a dump for streaming, decompressing .bz2 and .gz on the fly."""
    suffix = path.suffix.lower()
    opener = bz2.open if suffix == ".bz2" else gzip.open if suffix == ".gz" else open
    with opener(path, "rb") as f:
        yield f


class MediaWikiReader:
    """One document per article; ``provenance.uri`` is the page URL, ``record`` the page id.

    Quarantine reasons: ``redirect``, ``namespace`` (not an article), ``empty`` (nothing left after
    stripping markup), ``parse_error`` (wikitext the parser rejects), ``invalid_xml`` (a broken dump:
    the pages before the fault are kept) and ``unreadable``.
    """

    name = "mediawiki"

    def __init__(self, source: MediaWikiSource, files: list[Path]):
        self.source = source
        self.files = files
        self.files_read = 0
        self.bytes_read = 0
        self.skip_sections = frozenset(s.strip().lower() for s in source.skip_sections)

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        yield from docs
        for path in self.files:
            self.files_read += 1
            yield from self._read_dump(path, stats)

    def _read_dump(self, path: Path, stats: StepStats) -> Iterator[Document]:
        site = _Site(url_base=None, drop_namespaces=DROP_LINK_NAMESPACES)
        try:
            self.bytes_read += path.stat().st_size
            retrieved_at = utc_iso(path.stat().st_mtime)  # when the dump was downloaded, near enough
        except OSError:
            retrieved_at = None
        try:
            with open_dump(path) as f:
                events = iter(ET.iterparse(f, events=("start", "end")))
                _, root = next(events)
                for event, elem in events:
                    if event != "end":
                        continue
                    tag = _local(elem.tag)
                    if tag == "siteinfo":
                        site = _Site.from_siteinfo(elem)
                        root.clear()
                    elif tag == "page":
                        doc = self._page(elem, site, path, stats)
                        # Drop the page (and every earlier sibling) from the tree: constant memory.
                        root.clear()
                        if doc is not None:
                            doc.provenance.retrieved_at = retrieved_at
                            yield doc
        except ET.ParseError as e:
            stats.drop(self._file_stub(path, f"the XML is broken at line {e.position[0]}: {e.msg}"),
                       "invalid_xml")
        except (OSError, EOFError) as e:
            stats.drop(self._file_stub(path, f"cannot read: {e}"), "unreadable")

    def _page(self, page: ET.Element, site: _Site, path: Path, stats: StepStats) -> Document | None:
        title, ns, page_id, redirect, wikitext = "", "0", "", None, ""
        for child in page:
            tag = _local(child.tag)
            if tag == "title":
                title = child.text or ""
            elif tag == "ns":
                ns = (child.text or "0").strip()
            elif tag == "id":
                page_id = (child.text or "").strip()
            elif tag == "redirect":
                redirect = child.get("title", "")
            elif tag == "revision":  # a history dump has several; the last is the newest
                for r in child:
                    if _local(r.tag) == "text":
                        wikitext = r.text or ""
        uri = site.page_url(title) if site.url_base else f"{path}#{page_id or title}"
        doc = Document(
            id=document_id(self.source.name, uri, page_id),
            text="",
            source=self.source.name,
            provenance=Provenance(uri=uri, reader=self.name, title=title, license=self.source.license,
                                  record=page_id or None),
        )
        if redirect is None and wikitext.lstrip()[:9].upper() == "#REDIRECT":
            redirect = ""  # older dumps mark redirects only in the text
        if redirect is not None:
            doc.meta["detail"] = f"redirect to '{redirect}'" if redirect else "redirect"
            stats.drop(doc, "redirect")
            return None
        if ns != "0":
            doc.meta["detail"] = f"namespace {ns}, not an article"
            stats.drop(doc, "namespace")
            return None
        try:
            doc.text = wikitext_to_text(wikitext, site.drop_namespaces, self.skip_sections)
        except ParserError as e:
            doc.meta["detail"] = f"mwparserfromhell could not parse the page: {e}"
            stats.drop(doc, "parse_error")
            return None
        if not doc.text:
            doc.meta["detail"] = "no text left after removing markup"
            stats.drop(doc, "empty")
            return None
        return doc

    def _file_stub(self, path: Path, detail: str) -> Document:
        doc = Document(id=document_id(self.source.name, path.name, None), text="", source=self.source.name,
                       provenance=Provenance(uri=str(path), reader=self.name, license=self.source.license))
        doc.meta["detail"] = detail
        return doc


@dataclass(frozen=True)
class _Site:
    """What a dump's ``<siteinfo>`` says that the reader needs: the URL of pages, localised namespaces."""

    url_base: str | None
    """Page URLs are ``{url_base}/{Title_with_underscores}``; None when the dump has no ``<base>``."""
    drop_namespaces: frozenset[str]

    @classmethod
    def from_siteinfo(cls, siteinfo: ET.Element) -> _Site:
        url_base, names = None, set(DROP_LINK_NAMESPACES)
        for child in siteinfo:
            tag = _local(child.tag)
            if tag == "base" and child.text:
                # <base> is the main page's URL, e.g. https://en.wikipedia.org/wiki/Main_Page
                url_base = child.text.strip().rpartition("/")[0]
            elif tag == "namespaces":
                for ns in child:
                    if ns.get("key") in MEDIA_NAMESPACE_KEYS and ns.text:
                        names.add(ns.text.strip().lower())
        return cls(url_base, frozenset(names))

    def page_url(self, title: str) -> str:
        return f"{self.url_base}/{quote(title.replace(' ', '_'), safe=URL_SAFE)}"
