"""The ``warc`` reader: web pages from web archives (WARC 1.0/1.1 and the older ARC, plain or compressed).

An archive is streamed record by record, so memory stays flat however large the file: a body is read
only when the record will become a document, and never beyond ``max_bytes``. WARC files are parsed with
FastWARC (native code); ARC files, which FastWARC does not read, with warcio. HTML goes through the configured extractor (resiliparse by default); other
accepted types (``text/plain``) are kept as they are.

Every record becomes a document or a quarantined stub with a reason, so the counts add up:

* ``request``, ``revisit`` (no payload of its own), ``not_a_capture`` (warcinfo, metadata and crawler-log
  records, the ARC file header, non-web URIs)
* ``http_status`` (not 2xx), ``not_text`` (a content type not in ``mime_types``), ``too_large``
* ``malformed_record`` (no valid HTTP header), ``truncated`` (the file ends, or its compressed data is
  corrupt, inside the record: counted so whatever the record is), ``undecodable`` (a transfer or content
  encoding that cannot be undone)
* ``empty`` (fewer than ``min_chars`` characters of text), ``extraction_failed`` (the extractor raised)

and, for a whole file: ``unreadable``, ``empty_archive``, ``not_an_archive`` and ``corrupt_archive`` (the
parser stopped partway: the records before the fault are kept, the rest of that file is lost, and the
next file is read).
"""

from __future__ import annotations

import html as html_lib
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gristmill.core.extras import check, require
from gristmill.data.readers.files import document_id
from gristmill.data.step import StepStats
from gristmill.data.web_config import WarcSource, WebTextOptions
from gristmill.formats.document import Document, Provenance

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
"""Content types that go through the HTML extractor; other accepted types are kept verbatim."""
BOILERPLATE_ELEMENTS = ["nav", "header", "footer", "aside", "form", "[hidden]", "[aria-hidden=true]",
                        "[role=navigation]", "[role=banner]", "[role=contentinfo]", "[role=complementary]"]
"""CSS selectors of what ``main_content: false`` leaves out: the page's frame as HTML5 marks it."""
READ_CHUNK = 1 << 16
"""Bytes read from an archive at a time (64 KiB): large enough to amortise calls, small enough to stream."""
WEB_SCHEMES = ("http://", "https://")
WHATWG_ALIASES = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "cp1252",
                  "ascii": "cp1252"}
"""Browsers decode these labels as windows-1252 (WHATWG Encoding), and pages are written for browsers."""
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]{1,40})""", re.I)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.I | re.S)
_WS = re.compile(r"\s+")


# ---------------------------------------------------------------------------------------------------------
# Body -> text, shared with the crawler


class Unusable(Exception):
    """A body that cannot become a document; ``reason`` is the quarantine reason, ``detail`` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_content_type(value: str | None) -> tuple[str, str | None]:
    """``text/html; charset=UTF-8`` -> (``text/html``, ``UTF-8``); a missing header gives ("", None)."""
    if not value:
        return "", None
    mime, _, params = value.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, v = param.partition("=")
        if key.strip().lower() == "charset":
            charset = v.strip().strip("\"'") or None
    return mime.strip().lower(), charset


def decode_text(body: bytes, charset: str | None, is_html: bool) -> str:
    """Bytes -> str as a browser would: BOM, then the declared charset, then UTF-8, then windows-1252.

    A declared charset is trusted (bad bytes become U+FFFD) because a page that declares one was written
    in it; an undeclared page is tried as UTF-8 first, as most of the web is.
    """
    if body.startswith(b"\xef\xbb\xbf"):
        return body[3:].decode("utf-8", "replace")
    declared = charset
    if not declared and is_html:
        m = _META_CHARSET.search(body, 0, 4096)
        declared = m.group(1).decode("ascii") if m else None
    if declared:
        try:
            return body.decode(WHATWG_ALIASES.get(declared.lower(), declared), "replace")
        except LookupError:
            pass  # an unknown label: sniff as if none were given
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("cp1252", "replace")


def html_title(text: str) -> str | None:
    """The page's ``<title>``, unescaped and on one line; None if it has none."""
    m = _TITLE.search(text, 0, 65536)
    if not m:
        return None
    title = _WS.sub(" ", html_lib.unescape(m.group(1))).strip()
    return title[:500] or None


def _dechunk(body: bytes) -> bytes:
    """Undo HTTP chunked transfer encoding; a body that does not parse as chunks is returned as it is,
    because some archivers record the header but store the body already de-chunked."""
    out, pos = [], 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return body
        try:
            size = int(body[pos:eol].split(b";", 1)[0].strip(), 16)
        except ValueError:
            return body
        if size == 0:
            return b"".join(out)
        start = eol + 2
        if start + size > len(body):
            return body
        out.append(body[start:start + size])
        pos = start + size + 2


def decode_body(body: bytes, transfer_encoding: str | None, content_encoding: str | None,
                max_bytes: int) -> bytes:
    """The payload with HTTP transfer and content encodings undone, at most ``max_bytes`` long.

    Raises :class:`Unusable` (``undecodable`` or ``too_large``) when it cannot be undone within the cap.
    """
    if transfer_encoding and "chunked" in transfer_encoding.lower():
        body = _dechunk(body)
    enc = (content_encoding or "").strip().lower()
    if enc in ("", "identity", "none"):
        return body
    if enc in ("gzip", "x-gzip", "deflate"):
        # 47 = 32 + 15: zlib detects a gzip or zlib header itself; raw deflate (-15) is the fallback some
        # servers send for "deflate".
        for wbits in (47, -15):
            d = zlib.decompressobj(wbits=wbits)
            try:
                out = d.decompress(body, max_bytes + 1)
            except zlib.error:
                continue
            if len(out) > max_bytes:
                raise Unusable("too_large", f"the {enc} body inflates past max_bytes={max_bytes}")
            return out
        raise Unusable("undecodable", f"the body says Content-Encoding: {enc} but does not decompress")
    if enc == "br":
        try:
            import brotli  # optional: few archives store brotli bodies
        except ImportError:
            raise Unusable("undecodable", "the body is brotli-compressed and the brotli package is not "
                                          "installed (pip install brotli)") from None
        try:
            out = brotli.decompress(body)
        except brotli.error as e:
            raise Unusable("undecodable", f"the brotli body does not decompress ({e})") from None
        if len(out) > max_bytes:
            raise Unusable("too_large", f"the br body inflates past max_bytes={max_bytes}")
        return out
    raise Unusable("undecodable", f"Content-Encoding '{enc}' is not supported (gzip, deflate, br are)")


class WebText:
    """Turns a response body into a page's text as a web source's config says (extractor, types, size).

    The extractor is imported here, when the source is set up, so a missing ``web`` extra is reported
    before any file is read.
    """

    def __init__(self, options: WebTextOptions, feature: str):
        self.options = options
        self.mime_types = frozenset(options.mime_types)
        self._extract: Callable[[str, str | None], str | None]
        if options.extractor == "resiliparse":
            require("resiliparse", extra="web", feature=feature)
            from resiliparse.extract.html2text import extract_plain_text

            main = options.main_content

            def _resiliparse(text: str, url: str | None) -> str | None:
                if main:
                    return extract_plain_text(text, main_content=True)
                return extract_plain_text(text, main_content=False, skip_elements=BOILERPLATE_ELEMENTS)

            self._extract = _resiliparse
        else:
            trafilatura = require("trafilatura", extra="web", feature=feature)

            def _trafilatura(text: str, url: str | None) -> str | None:
                return trafilatura.extract(text, url=url, include_comments=False)

            self._extract = _trafilatura

    def accepts(self, mime: str) -> bool:
        return mime in self.mime_types

    def not_text_detail(self, mime: str) -> str:
        return (f"content type '{mime or 'missing'}' is not read as text "
                f"(mime_types: {', '.join(self.options.mime_types)})")

    def text(self, body: bytes, mime: str, charset: str | None, url: str | None) -> tuple[str, str | None]:
        """(text, title) of an accepted body; raises :class:`Unusable` (``empty``, ``extraction_failed``)."""
        is_html = mime in HTML_TYPES
        decoded = decode_text(body, charset, is_html)
        title = None
        if is_html:
            title = html_title(decoded)
            try:
                out = self._extract(decoded, url) or ""
            except Exception as e:  # third-party code on arbitrary web input: one page must not stop a run
                raise Unusable("extraction_failed",
                               f"{self.options.extractor} failed on the page: {type(e).__name__}: {e}") from None
        else:
            out = decoded
        out = out.strip()
        if len(out) < self.options.min_chars:
            raise Unusable("empty", f"{len(out)} characters of text after extraction, fewer than "
                                    f"min_chars={self.options.min_chars}")
        return out, title


# ---------------------------------------------------------------------------------------------------------
# Archive records, from either parser


@dataclass
class _Record:
    """One archive record as the reader needs it, whichever parser produced it."""

    offset: int
    """Byte offset of the record (of its gzip member, in a compressed file): what CDX indexes record."""
    kind: str
    """``response``, ``resource``, ``request``, ``revisit``, ``warcinfo``, ``metadata`` ... or ``arc_header``."""
    uri: str | None
    record_id: str | None
    date: str | None
    """ISO 8601 UTC capture time."""
    status_line: str | None
    """The HTTP status line as recorded, for an HTTP record; None if there is none or it did not parse."""
    status: int | None
    http_header: Callable[[str], str | None]
    """Case-insensitive HTTP header lookup (always None for records without an HTTP header)."""
    warc_header: Callable[[str], str | None]
    length: int
    """Payload bytes the record declares (after the HTTP header)."""
    read: Callable[[int], bytes]
    """Read up to n payload bytes; b"" at the end of the payload or of a truncated file."""
    skip: Callable[[], int]
    """Consume the rest of the payload; returns how many bytes that was."""
    length_known: bool = True
    """False when the parser consumed the payload while failing on its HTTP header, so ``got`` says
    nothing about truncation."""
    got: int = 0
    """Payload bytes read or skipped so far."""
    fault: str | None = None
    """What the parser raised while reading the payload (corrupt compressed data), if it did."""

    def read_body(self, limit: int) -> bytes | None:
        """The whole payload, or None (payload skipped) if it is longer than ``limit`` bytes."""
        if self.length > limit:
            self.skip_rest()
            return None
        parts = []
        try:
            while self.got < self.length:
                chunk = self.read(min(READ_CHUNK, self.length - self.got))
                if not chunk:
                    break
                self.got += len(chunk)
                parts.append(chunk)
        except Exception as e:  # the parser's error on corrupt data (its types vary); the record is cut here
            self.fault = f"{type(e).__name__}: {e}"
        return b"".join(parts)

    def skip_rest(self) -> None:
        if self.got < self.length and self.fault is None:
            try:
                self.got += self.skip()
            except Exception as e:  # as in read_body
                self.fault = f"{type(e).__name__}: {e}"

    @property
    def truncated(self) -> bool:
        """Whether the payload ended early: the file ends, or its data is corrupt, inside the record (only
        meaningful once the payload was read or skipped)."""
        return self.fault is not None or (self.length_known and self.got < self.length)

    def cut_detail(self) -> str:
        if self.fault is not None:
            return f"the payload cannot be read past byte {self.got} of {self.length} ({self.fault})"
        return f"the file ends {self.length - self.got} bytes before the end of the record's {self.length}-byte payload"


def _no_header(_: str) -> str | None:
    return None


def sniff_format(path: Path) -> str | None:
    """``warc``, ``arc``, ``empty``, or None (not an archive), from the first bytes (decompressed if gzip)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "empty"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "warc"  # zstd: FastWARC reads it; ARC files were never zstd-compressed
    if head[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, 64)
        except zlib.error:
            return None
    head = head.lstrip(b"\r\n")
    if head.startswith(b"WARC/"):
        return "warc"
    if head.startswith(b"filedesc://"):
        return "arc"
    return None


def _fastwarc_records(path: Path) -> Iterator[_Record]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    kinds = {int(getattr(WarcRecordType, k)): k for k in ("warcinfo", "response", "resource", "request", "metadata",
                                                           "revisit", "conversion", "continuation")}
    # A path (not a Python file object) lets FastWARC read and inflate in native code. HTTP headers are parsed
    # only for the records that need them (responses and revisits), not for every request record.
    for rec in ArchiveIterator(str(path), parse_http=False):
        kind = kinds.get(int(rec.record_type)) or str(rec.record_type)
        status_line = status = hh = None
        http_header = _no_header
        if kind in ("response", "revisit") and rec.is_http:
            rec.parse_http()
            hh = rec.http_headers
            if hh is not None:
                status_line, status = hh.status_line, hh.status_code
                http_header = hh.get
        headers = rec.headers
        reader = rec.reader
        yield _Record(offset=rec.stream_pos, kind=kind, uri=headers.get("WARC-Target-URI"),
                      record_id=rec.record_id, date=headers.get("WARC-Date"), status_line=status_line,
                      status=status, http_header=http_header, warc_header=headers.get,
                      length=rec.content_length, read=reader.read, skip=reader.consume,
                      length_known=hh is None or hh.status_line is not None)


def _arc_date(value: str | None) -> str | None:
    """ARC's ``20140216050221`` -> ``2014-02-16T05:02:21Z``; anything else is returned as it is."""
    if value and len(value) >= 14 and value[:14].isdigit():
        v = value
        return f"{v[0:4]}-{v[4:6]}-{v[6:8]}T{v[8:10]}:{v[10:12]}:{v[12:14]}Z"
    return value


def _arc_records(path: Path) -> Iterator[_Record]:
    from warcio.archiveiterator import ArchiveIterator
    from warcio.limitreader import LimitReader

    with open(path, "rb") as f:
        it = ArchiveIterator(f, arc2warc=False)
        for rec in it:
            raw = rec.raw_stream
            hh = rec.http_headers
            status_line = status = None
            http_header = _no_header
            if hh is not None and hh.statusline:
                status_line = hh.statusline
                code = hh.get_statuscode()
                status = int(code) if code and code.isdigit() else None
                http_header = hh.get_header
            # warcio leaves a record with an unparseable length unbounded; reading it would swallow the rest
            # of the file, so such a record counts as having no payload (and is quarantined as malformed).
            bounded = isinstance(raw, LimitReader)

            def skip(raw: Any = raw) -> int:
                n = 0
                while chunk := raw.read(READ_CHUNK):
                    n += len(chunk)
                return n

            # ``it.offset`` is where the current record starts; get_record_offset() would read it to the end.
            yield _Record(offset=it.offset, kind=rec.rec_type, uri=rec.rec_headers.get_header("uri"),
                          record_id=None, date=_arc_date(rec.rec_headers.get_header("archive-date")),
                          status_line=status_line if bounded else None, status=status if bounded else None,
                          http_header=http_header, warc_header=rec.rec_headers.get_header,
                          length=raw.limit if bounded else 0, read=raw.read if bounded else (lambda n: b""),
                          skip=skip if bounded else (lambda: 0))


# ---------------------------------------------------------------------------------------------------------


class WarcReader:
    """One document per 2xx HTML or text response (or web ``resource`` record) in WARC and ARC files.

    ``provenance.uri`` is the captured URL and ``record`` the record's byte offset in the file; ``meta``
    has ``warc_file``, ``warc_record_id``, ``warc_date``, ``content_type``, ``http_status`` and, where a
    header gives it, ``language``. See the module docstring for the quarantine reasons.
    """

    name = "warc"

    def __init__(self, source: WarcSource, files: list[Path]):
        self.source = source
        self.files = files
        feature = f"warc source '{source.name}'"
        check("fastwarc", extra="web", feature=feature)
        check("warcio", extra="web", feature=feature)
        self.web = WebText(source, feature)
        self.files_read = 0
        self.records = 0
        """Archive records seen; each became a document or a record-level drop."""

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        yield from docs
        kept = 0
        for path in self.files:
            if self.source.limit is not None and kept >= self.source.limit:
                return
            self.files_read += 1
            for doc in self._read_file(path, stats):
                yield doc
                kept += 1
                if self.source.limit is not None and kept >= self.source.limit:
                    return

    # -- files ---------------------------------------------------------------------------------------------

    def _read_file(self, path: Path, stats: StepStats) -> Iterator[Document]:
        try:
            fmt = sniff_format(path)
        except OSError as e:
            stats.drop(self._file_stub(path, f"cannot read {path.name}: {e.strerror}"), "unreadable")
            return
        if fmt == "empty":
            stats.drop(self._file_stub(path, f"{path.name} is empty (0 bytes)"), "empty_archive")
            return
        if fmt is None:
            stats.drop(self._file_stub(path, f"{path.name} is not a WARC or ARC file (it does not start with "
                                             f"'WARC/' or 'filedesc://', plain or gzip-compressed)"),
                       "not_an_archive")
            return
        records = _fastwarc_records(path) if fmt == "warc" else _arc_records(path)
        n, last = 0, None
        try:
            while True:
                try:
                    rec = next(records)
                except StopIteration:
                    break
                except Exception as e:  # parsers raise assorted types on corrupt input; none is our bug
                    where = f"after the record at offset {last}" if last is not None else "at the first record"
                    detail = (f"{path.name} cannot be parsed {where} ({type(e).__name__}: {e}); the {n} "
                              f"records before it were read, the rest of the file is skipped")
                    stats.drop(self._file_stub(path, detail), "corrupt_archive")
                    return
                n, last = n + 1, rec.offset
                self.records += 1
                doc = self._record(rec, path, stats)
                if doc is not None:
                    yield doc
        finally:
            records.close()

    # -- records -------------------------------------------------------------------------------------------

    def _record(self, rec: _Record, path: Path, stats: StepStats) -> Document | None:
        """The record's document, or None after quarantining it with its reason."""
        def drop(reason: str, detail: str, status: int | None = None) -> None:
            self._drop(rec, path, stats, reason, detail, status)

        uri = rec.uri or ""
        if rec.kind == "request":
            return drop("request", "an HTTP request record (the response is a record of its own)")
        if rec.kind == "revisit":
            target = rec.warc_header("WARC-Refers-To-Target-URI") or uri
            when = rec.warc_header("WARC-Refers-To-Date")
            return drop("revisit", f"a revisit record: the payload is that of an earlier capture of {target}"
                                   + (f" ({when})" if when else ""))
        if rec.kind not in ("response", "resource"):
            return drop("not_a_capture", f"a {rec.kind} record, not a captured page")
        if not uri.lower().startswith(WEB_SCHEMES):
            return drop("not_a_capture", f"a {rec.kind} record for '{uri or '(no URI)'}', not a web page")
        if rec.kind == "response":
            if rec.status is None:
                line = rec.status_line
                return drop("malformed_record", f"the HTTP status line {line!r} is not valid" if line
                            else "the response has no HTTP header that parses")
            if not 200 <= rec.status < 300:
                loc = rec.http_header("Location")
                return drop("http_status", f"HTTP {rec.status}" + (f", redirect to {loc}" if loc else ""),
                            status=rec.status)
            ctype = rec.http_header("Content-Type")
        else:
            ctype = rec.warc_header("Content-Type")
        mime, charset = parse_content_type(ctype)
        if not self.web.accepts(mime):
            return drop("not_text", self.web.not_text_detail(mime), status=rec.status)
        body = rec.read_body(self.source.max_bytes)
        if rec.truncated:
            return drop("truncated", rec.cut_detail(), status=rec.status)
        if body is None:
            return drop("too_large", f"the payload is {rec.length} bytes, over max_bytes="
                                     f"{self.source.max_bytes}", status=rec.status)
        try:
            body = decode_body(body, rec.http_header("Transfer-Encoding"), rec.http_header("Content-Encoding"),
                               self.source.max_bytes)
            text, title = self.web.text(body, mime, charset, uri)
        except Unusable as u:
            return drop(u.reason, u.detail, status=rec.status)
        doc = self._doc(rec, path, text, title)
        doc.meta.update(self._meta(rec, path, mime, rec.status))
        lang = rec.http_header("Content-Language") or rec.warc_header("WARC-Identified-Content-Language")
        if lang and lang.strip():
            doc.meta["language"] = lang.split(",", 1)[0].strip()
        truncated = rec.warc_header("WARC-Truncated")
        if truncated:
            doc.meta["warc_truncated"] = truncated  # cut by the archiver (length, time): kept, but marked
        return doc

    def _drop(self, rec: _Record, path: Path, stats: StepStats, reason: str, detail: str,
              status: int | None = None) -> None:
        rec.skip_rest()  # reading to the end also tells a truncated file from a whole one
        if rec.truncated and reason != "truncated":
            # An incomplete record is counted as such whatever else it is, so a cut file shows in the counts.
            detail = f"{rec.cut_detail()}, in a {rec.kind} record (which would have been dropped anyway: {detail})"
            reason = "truncated"
        stub = self._doc(rec, path, "", None)
        stub.meta = self._meta(rec, path, None, status)
        stub.meta["detail"] = detail
        stats.drop(stub, reason)

    def _doc(self, rec: _Record, path: Path, text: str, title: str | None) -> Document:
        # The file name and offset locate the record; the record id tells apart records that share an
        # offset (several records in one gzip member).
        key = f"{rec.offset}:{rec.record_id or ''}"
        return Document(
            id=document_id(self.source.name, path.name, key),
            text=text,
            source=self.source.name,
            provenance=Provenance(uri=rec.uri or str(path), reader=self.name, title=title,
                                  license=self.source.license, record=str(rec.offset), retrieved_at=rec.date),
        )

    @staticmethod
    def _meta(rec: _Record, path: Path, mime: str | None, status: int | None) -> dict[str, Any]:
        return {"warc_file": path.name, "warc_record_id": rec.record_id, "warc_date": rec.date,
                "content_type": mime, "http_status": status}

    def _file_stub(self, path: Path, detail: str) -> Document:
        doc = Document(id=document_id(self.source.name, path.name, None), text="", source=self.source.name,
                       provenance=Provenance(uri=str(path), reader=self.name, license=self.source.license))
        doc.meta["detail"] = detail
        doc.meta["warc_file"] = path.name
        return doc
