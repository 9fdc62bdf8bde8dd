"""The WARC reader on the real web archives pywb ships (well-formed and malformed), on archives cut or
garbled here, and on a small WARC written here to cover each encoding and quarantine reason.

The samples are pywb's test data: ``pip install --no-deps pywb==2.10.0`` puts them in the environment's
data folder (``sample_archive/warcs/``).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import subprocess
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path

import pytest

from gristmill.data.step import StepStats
from gristmill.data.web_config import WarcSource
from gristmill.errors import MissingExtra
from gristmill.formats.document import Document

pytest.importorskip("fastwarc")
pytest.importorskip("warcio")
pytest.importorskip("resiliparse")
from gristmill.data.readers.warc import WarcReader  # noqa: E402

RECORD_REASONS = {"request", "revisit", "not_a_capture", "http_status", "not_text", "too_large",
                  "malformed_record", "truncated", "undecodable", "empty", "extraction_failed"}
"""Quarantine reasons for one record (the others are about a whole file)."""

# What each of pywb's sample archives holds: (documents, quarantined records by reason). Worked out by hand
# from the files: e.g. iana.warc.gz has 16 HTML pages, 4 redirects, 28 scripts/images/fonts, 171 requests
# and 123 revisits beside its warcinfo record.
EXPECTED = {
    "bad.arc": (0, {"malformed_record": 3, "not_a_capture": 1}),  # lengths of -1, 1 and 'abc'
    "dupes.warc.gz": (1, {"http_status": 1, "not_a_capture": 1, "not_text": 1, "request": 12, "revisit": 9}),
    "example-bad.warc.gz.bad": (1, {"http_status": 1, "not_a_capture": 1, "request": 2, "revisit": 1}),
    "example-extra.warc": (1, {"malformed_record": 1, "request": 2, "revisit": 2}),  # 'HTTPX/1.1 200 OK'
    "example-url-agnostic-orig.warc.gz": (1, {"not_a_capture": 1}),
    "example-url-agnostic-revisit.warc.gz": (0, {"not_a_capture": 1, "revisit": 1}),
    "example-wget-1-14.warc.gz": (1, {"not_a_capture": 4, "request": 1}),  # wget's log and manifest
    "example-wpull.warc.gz": (1, {"not_a_capture": 2, "request": 1}),
    "example.arc": (1, {"not_a_capture": 1}),
    "example.arc.gz": (1, {"not_a_capture": 1}),
    "example.warc": (1, {"corrupt_archive": 1, "not_a_capture": 1, "request": 2, "revisit": 1}),  # bad length
    "example.warc.gz": (1, {"http_status": 1, "not_a_capture": 1, "request": 2, "revisit": 1}),
    "example2.warc.gz": (1, {"not_a_capture": 1, "request": 1}),
    "httpbin-resource.warc.gz": (0, {"not_text": 1}),  # application/json
    "iana.warc.gz": (16, {"http_status": 4, "not_a_capture": 1, "not_text": 28, "request": 171, "revisit": 123}),
    "missing-status-text.warc": (0, {"malformed_record": 1}),  # 'HTTP/1.0 302 ' does not parse
    "post-test.warc.gz": (0, {"not_text": 3, "request": 3}),
}


@pytest.fixture(scope="module")
def samples() -> list[Path]:
    try:
        dist = metadata.distribution("pywb")
    except metadata.PackageNotFoundError:
        pytest.skip("pywb's sample archives are not installed (pip install --no-deps pywb==2.10.0)")
    files = sorted(Path(str(f.locate())) for f in dist.files or () if "sample_archive/warcs/" in str(f))
    if not files:
        pytest.skip("pywb is installed without its sample archives")
    return files


def read(files: list[Path], **kw: object) -> tuple[list[Document], list[tuple[str, Document]], WarcReader]:
    drops: list[tuple[str, Document]] = []
    stats = StepStats("warc", quarantine=lambda doc, step, reason: drops.append((reason, doc)))
    reader = WarcReader(WarcSource(name="web", path="unused", license="CC0", **kw), files)
    docs = list(reader.run([], stats))
    assert sum(stats.dropped.values()) == len(drops)
    return docs, drops, reader


def count_records(path: Path) -> int:
    """Records in a well-formed archive, counted by another parser (warcio) as a check on ours."""
    from warcio.archiveiterator import ArchiveIterator

    with open(path, "rb") as f, contextlib.redirect_stderr(io.StringIO()):
        return sum(1 for _ in ArchiveIterator(f))


def test_every_sample_archive(samples: list[Path]) -> None:
    assert {p.name for p in samples} == set(EXPECTED), "pywb's sample set changed: update EXPECTED"
    for path in samples:
        docs, drops, reader = read([path])
        n_docs, reasons = EXPECTED[path.name]
        assert (len(docs), dict(Counter(r for r, _ in drops))) == (n_docs, reasons), path.name
        # Every record is a document or a quarantined record; file-level faults come on top.
        record_drops = sum(1 for r, _ in drops if r in RECORD_REASONS)
        assert len(docs) + record_drops == reader.records, path.name
        if path.name not in ("example.warc", "example-bad.warc.gz.bad", "example-extra.warc"):
            # (warcio reads past example.warc's fault, rejects a single-member .gz, and reads HTTPX as HTTP)
            assert reader.records == count_records(path), path.name
        for doc in docs:
            assert doc.text.strip() and doc.provenance.uri.startswith(("http://", "https://"))
            assert doc.provenance.reader == "warc" and doc.provenance.license == "CC0"
            assert doc.provenance.record is not None and doc.provenance.record.isdigit()
            assert doc.meta["warc_file"] == path.name and doc.meta["http_status"] == 200
            assert doc.meta["content_type"] == "text/html" and doc.meta["warc_date"].startswith("20")
        for reason, stub in drops:
            assert stub.text == "" and stub.meta["detail"], (path.name, reason)


def test_malformed_archives_do_not_stop_the_rest(samples: list[Path]) -> None:
    docs, drops, reader = read(samples)
    assert reader.files_read == len(samples)
    assert len(docs) == sum(n for n, _ in EXPECTED.values())
    assert len({d.id for d in docs}) == len(docs)  # ids are unique, even for records that share an offset
    by_file = Counter(d.meta["warc_file"] for d in docs)
    assert by_file["iana.warc.gz"] == 16 and by_file["post-test.warc.gz"] == 0
    details = {(r, s.meta["warc_file"]): s.meta["detail"] for r, s in drops}
    assert "HTTPX/1.1 200 OK" in details[("malformed_record", "example-extra.warc")]
    corrupt = details[("corrupt_archive", "example.warc")]
    assert "offset 4061" in corrupt and "4 records before it" not in corrupt and "5 records" in corrupt
    home = next(d for d in docs if d.provenance.uri == "http://www.iana.org/")
    assert home.provenance.title == "Internet Assigned Numbers Authority"
    assert home.meta["warc_record_id"] == "<urn:uuid:4eec4942-a541-410a-99f4-50de39b62118>"
    assert home.provenance.record == "334"  # the gzip member's offset, as CDX indexes give it
    again, _, _ = read(samples)
    assert [d.id for d in again] == [d.id for d in docs]  # stable ids


def test_cut_and_garbled_files(samples: list[Path], tmp_path: Path) -> None:
    src = {p.name: p.read_bytes() for p in samples}
    flipped = bytearray(src["iana.warc.gz"])
    flipped[100_000:100_200] = bytes(b ^ 0x5A for b in flipped[100_000:100_200])  # inside a font's member
    made = {
        "a-iana-cut.warc.gz": src["iana.warc.gz"][:300_000],  # inside a font's gzip member
        "b-example-cut.warc": src["example.warc"][:3000],  # inside a request record
        "c-example-cut.arc": src["example.arc"][:1000],  # inside the page
        "d-empty.warc": b"",
        "e-not-an-archive.warc.gz": gzip.compress(b"<html>just a page</html>"),
        "f-garbage.warc": bytes(range(256)) * 8,
        "g-iana-flipped.warc.gz": bytes(flipped),
    }
    files = []
    for name, data in made.items():
        (tmp_path / name).write_bytes(data)
        files.append(tmp_path / name)
    files.append(next(p for p in samples if p.name == "example.warc.gz"))  # a good file after the bad ones
    docs, drops, reader = read(files)
    by_file = Counter(d.meta["warc_file"] for d in docs)
    # The records before each fault are kept; the next file is read.
    assert by_file == {"a-iana-cut.warc.gz": 1, "b-example-cut.warc": 1, "g-iana-flipped.warc.gz": 1,
                       "example.warc.gz": 1}
    reasons = Counter((r, s.meta["warc_file"]) for r, s in drops)
    assert reasons[("truncated", "a-iana-cut.warc.gz")] == 1
    assert reasons[("truncated", "b-example-cut.warc")] == 1
    assert reasons[("truncated", "c-example-cut.arc")] == 1
    assert reasons[("empty_archive", "d-empty.warc")] == 1
    assert reasons[("not_an_archive", "e-not-an-archive.warc.gz")] == 1
    assert reasons[("not_an_archive", "f-garbage.warc")] == 1
    assert reasons[("truncated", "g-iana-flipped.warc.gz")] == 1  # the record whose data is corrupt
    assert reasons[("corrupt_archive", "g-iana-flipped.warc.gz")] == 1  # and the rest of the file
    assert len(docs) + sum(1 for r, _ in drops if r in RECORD_REASONS) == reader.records
    cut = next(s for r, s in drops if r == "truncated" and s.meta["warc_file"] == "a-iana-cut.warc.gz")
    assert cut.provenance.uri.endswith("OpenSans-Bold.ttf") and "file ends" in cut.meta["detail"]


# -- a WARC written here, one record per case ----------------------------------------------------------------


def warc_record(n: int, kind: str, uri: str, block: bytes, content_type: str | None = None) -> bytes:
    ctype = content_type or f"application/http; msgtype={'request' if kind == 'request' else 'response'}"
    head = (f"WARC/1.1\r\nWARC-Type: {kind}\r\nWARC-Record-ID: <urn:uuid:00000000-0000-4000-8000-{n:012d}>\r\n"
            f"WARC-Date: 2024-05-0{n % 9 + 1}T12:00:00Z\r\nWARC-Target-URI: {uri}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(block)}\r\n\r\n")
    return head.encode() + block + b"\r\n\r\n"


def http(status: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 {status}\r\n{lines}\r\n".encode() + body


def chunked(data: bytes, size: int = 50) -> bytes:
    parts = [f"{len(data[i:i + size]):x}\r\n".encode() + data[i:i + size] + b"\r\n" for i in range(0, len(data), size)]
    return b"".join(parts) + b"0\r\n\r\n"


HTML = "<html><head><title>{t}</title></head><body><article><h1>{t}</h1><p>{p}</p></article></body></html>"
PARA = "A paragraph long enough to be the main content of this page, about a café by the mill pond. " * 2


def made_records() -> list[bytes]:
    page = HTML.format(t="Mill", p=PARA).encode()
    latin1 = HTML.format(t="Café", p=PARA).encode("latin-1")
    return [
        warc_record(1, "response", "https://mill.example/", http("200 OK", {
            "Content-Type": "text/html; charset=utf-8", "Content-Language": "de, en"}, page)),
        warc_record(2, "response", "https://mill.example/latin1", http("200 OK", {
            "Content-Type": "text/html; charset=iso-8859-1"}, latin1)),
        warc_record(3, "response", "https://mill.example/chunked-gzip", http("200 OK", {
            "Content-Type": "text/html", "Transfer-Encoding": "chunked", "Content-Encoding": "gzip"},
            chunked(gzip.compress(page)))),
        warc_record(4, "response", "https://mill.example/missing", http("404 Not Found", {
            "Content-Type": "text/html"}, b"<html>gone</html>")),
        warc_record(5, "response", "https://mill.example/logo.png", http("200 OK", {
            "Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\n" + bytes(64))),
        warc_record(6, "response", "https://mill.example/huge", http("200 OK", {
            "Content-Type": "text/html"}, HTML.format(t="Huge", p=PARA * 40).encode())),
        warc_record(7, "response", "https://mill.example/script-only", http("200 OK", {
            "Content-Type": "text/html"}, b"<html><body><script>var x = 1;</script></body></html>")),
        warc_record(8, "resource", "https://mill.example/notes.txt", b"Plain notes about the mill.\n",
                    content_type="text/plain"),
        warc_record(9, "resource", "metadata://crawler/log.txt", b"crawler log\n", content_type="text/plain"),
        warc_record(10, "request", "https://mill.example/", b"GET / HTTP/1.1\r\nHost: mill.example\r\n\r\n"),
        warc_record(11, "revisit", "https://mill.example/", http("200 OK", {"Content-Type": "text/html"}, b"")),
        warc_record(12, "response", "https://mill.example/bad-gzip", http("200 OK", {
            "Content-Type": "text/html", "Content-Encoding": "gzip"}, b"\x1f\x8b\x08\x00 not really gzip")),
    ]


MADE_DOCS = {"https://mill.example/", "https://mill.example/latin1", "https://mill.example/chunked-gzip",
             "https://mill.example/notes.txt"}
MADE_DROPS = {"http_status": 1, "not_text": 1, "too_large": 1, "empty": 1, "not_a_capture": 1, "request": 1,
              "revisit": 1, "undecodable": 1}


@pytest.mark.parametrize("compressed", [False, True])
def test_each_case_of_a_made_warc(tmp_path: Path, compressed: bool) -> None:
    records = made_records()
    path = tmp_path / ("made.warc.gz" if compressed else "made.warc")
    path.write_bytes(b"".join(gzip.compress(r) for r in records) if compressed else b"".join(records))
    docs, drops, reader = read([path], max_bytes=4096)
    assert reader.records == len(records)
    assert {d.provenance.uri for d in docs} == MADE_DOCS
    assert dict(Counter(r for r, _ in drops)) == MADE_DROPS
    by_uri = {d.provenance.uri: d for d in docs}
    home = by_uri["https://mill.example/"]
    assert home.provenance.title == "Mill" and "café by the mill pond" in home.text
    assert home.meta["language"] == "de" and home.meta["warc_date"] == "2024-05-02T12:00:00Z"
    assert "café" in by_uri["https://mill.example/latin1"].text
    assert by_uri["https://mill.example/latin1"].provenance.title == "Café"
    assert by_uri["https://mill.example/chunked-gzip"].text == home.text
    assert by_uri["https://mill.example/notes.txt"].text == "Plain notes about the mill."
    assert by_uri["https://mill.example/notes.txt"].meta["http_status"] is None
    offsets = [int(d.provenance.record) for d in docs]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    details = {s.provenance.uri: s.meta["detail"] for _, s in drops}
    assert details["https://mill.example/missing"] == "HTTP 404"
    assert "image/png" in details["https://mill.example/logo.png"]
    assert "max_bytes=4096" in details["https://mill.example/huge"]


def test_options(samples: list[Path], tmp_path: Path) -> None:
    resource = [p for p in samples if p.name == "httpbin-resource.warc.gz"]
    docs, _, _ = read(resource, mime_types=["application/json"])
    assert len(docs) == 1 and '"url": "http://httpbin.org/anything/resource.json"' in docs[0].text
    iana = [p for p in samples if p.name == "iana.warc.gz"]
    assert len(read(iana, limit=3)[0]) == 3
    docs, drops, _ = read(iana, min_chars=1500)
    assert all(len(d.text) >= 1500 for d in docs) and any(r == "empty" for r, _ in drops)


def test_trafilatura_extractor(samples: list[Path]) -> None:
    pytest.importorskip("trafilatura")
    docs, _, _ = read([p for p in samples if p.name == "example.warc.gz"], extractor="trafilatura")
    assert len(docs) == 1 and "illustrative examples" in docs[0].text


def test_missing_extractor_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "trafilatura", None)  # as if the package were not installed
    with pytest.raises(MissingExtra, match=r"gristmill\[web\]"):
        WarcReader(WarcSource(name="web", path="x", extractor="trafilatura"), [])


def test_web_readers_import_no_torch_and_no_parser() -> None:
    """The web readers are data-engine code: no torch, and the parsers load only when a reader is made."""
    code = ("import sys, gristmill.data.readers.warc, gristmill.data.readers.crawler, gristmill.data.web_config; "
            "heavy = [m for m in ('torch', 'fastwarc', 'warcio', 'resiliparse', 'trafilatura') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_samples_through_the_collect_stage(samples: list[Path], tmp_path: Path) -> None:
    """Every sample archive, malformed ones included, as one warc source of the collect stage."""
    from gristmill.core.workspace import StageContext
    from gristmill.data.config import CollectConfig
    from gristmill.formats.document import read_documents, read_quarantine
    from gristmill.stages.collect import run as run_collect

    ctx = StageContext(run_dir=tmp_path, stage="collect", seed=1, log=lambda m: None)
    ctx.out_dir.mkdir()
    src = {"name": "web", "type": "warc", "path": str(samples[0].parent), "license": "CC0"}
    stats = run_collect(ctx, CollectConfig(sources=[src], input_shard_mb=0.5, workers=1))
    docs, quarantine = list(read_documents(ctx.out_dir)), list(read_quarantine(ctx.out_dir))
    expected = Counter()
    for _, reasons in EXPECTED.values():
        expected.update(reasons)
    assert len(docs) == sum(n for n, _ in EXPECTED.values()) == stats["documents"]
    assert Counter(q["reason"] for q in quarantine) == expected
    assert stats["sources"]["web"]["quarantined"] == dict(sorted(expected.items()))
    assert stats["sources"]["web"]["records"] == len(docs) + sum(n for r, n in expected.items() if r in RECORD_REASONS)
    assert stats["sources"]["web"]["shards"] > 1 and stats["sources"]["web"]["files_read"] == len(samples)
    home = next(d for d in docs if d.provenance.uri == "http://www.iana.org/")
    assert home.provenance.retrieved_at == home.meta["warc_date"] and home.provenance.sha256
    assert stats["licenses"] == {"CC0": {"documents": len(docs), "bytes": sum(len(d.text.encode()) for d in docs)}}


def test_main_content_off_keeps_more_text_and_drops_the_page_frame(samples: list[Path]) -> None:
    iana = [p for p in samples if p.name == "iana.warc.gz"]
    main, _, _ = read(iana)
    plain, _, _ = read(iana, main_content=False)
    assert [d.id for d in main] == [d.id for d in plain]
    assert sum(len(d.text) for d in plain) >= sum(len(d.text) for d in main)
    page = HTML.replace("<body>", "<body><nav>Home | About | Contact</nav>").replace(
        "</body>", "<footer>Copyright the mill</footer></body>").format(t="Mill", p=PARA)
    from gristmill.data.readers.warc import WebText

    text, _ = WebText(WarcSource(name="w", path="x", main_content=False), "test").text(
        page.encode(), "text/html", "utf-8", None)
    assert "café by the mill pond" in text and "About" not in text and "Copyright" not in text
    with pytest.raises(ValueError, match="main_content: false needs extractor: resiliparse"):
        WarcSource(name="w", path="x", extractor="trafilatura", main_content=False)
