"""The crawler against a real HTTP server on 127.0.0.1 that the test starts: nothing else is contacted.

The site has linked pages, a robots.txt that disallows /private/, a sitemap with a page nothing links to,
a slow page (the first request times out), a flaky page (500, then 200), a broken page (always 500), a
redirect, a redirect loop, a binary file, a plain-text file and a page deeper than max_depth.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gristmill.data.step import StepStats
from gristmill.data.web_config import CrawlSource
from gristmill.errors import ConfigError
from gristmill.formats.document import Document

pytest.importorskip("resiliparse")
from gristmill.data.readers.crawler import Crawler, normalize_url  # noqa: E402

RATE = 20.0
"""Requests per second per host in these tests: 50 ms between request starts."""


def page(title: str, body: str, links: list[str] = ()) -> bytes:
    anchors = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    return (f"<!doctype html><html><head><title>{title}</title></head><body><main><h1>{title}</h1>"
            f"<p>{body}</p><ul>{anchors}</ul></main></body></html>").encode()


@dataclass
class Site:
    """The test site's routes and the log of every request it served."""

    base: str = ""
    log: list[tuple[float, str, str]] = field(default_factory=list)
    """(monotonic time the request arrived, path, User-Agent), in order of arrival."""
    hits: dict[str, int] = field(default_factory=dict)
    robots_status: int = 200
    robots_extra: str = ""
    active: int = 0
    max_active: int = 0
    """The most requests the server was handling at once."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def paths(self, since: int = 0) -> list[str]:
        return [p for _, p, _ in self.log[since:]]


ROOT_LINKS = ["/a", "/b", "/private/secret", "/old", "/loop1", "/slow", "/flaky", "/broken", "/file.bin",
              "/notes.txt", "http://elsewhere.invalid/x", "/a#section", "mailto:someone@example.org"]
RETRIED = ("/slow", "/flaky", "/broken")
"""Pages the server fails on purpose, so the crawler asks for them more than once."""
TEXT = "Gristmill grinds text into training data, one polite request at a time. " * 3


def make_handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def send(self, status: int, body: bytes = b"", ctype: str = "text/html; charset=utf-8",
                 headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            with site.lock:
                site.active += 1
                site.max_active = max(site.max_active, site.active)
            try:
                self.route()
            finally:
                with site.lock:
                    site.active -= 1

        def route(self) -> None:
            path = self.path
            with site.lock:
                site.log.append((time.monotonic(), path, self.headers.get("User-Agent", "")))
                n = site.hits[path] = site.hits.get(path, 0) + 1
            if path == "/robots.txt":
                rules = f"User-agent: *\nDisallow: /private/\n{site.robots_extra}"
                self.send(site.robots_status, rules.encode(), "text/plain")
            elif path == "/sitemap.xml":
                xml = ('<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/'
                       f'sitemap/0.9"><url><loc>{site.base}/unlinked</loc></url>'
                       f'<url><loc>{site.base}/a</loc></url></urlset>')
                self.send(200, xml.encode(), "application/xml")
            elif path == "/":
                self.send(200, page("Home", TEXT, ROOT_LINKS))
            elif path == "/a":
                self.send(200, page("Page A", TEXT, ["/b", "/deep1"]))
            elif path == "/b":
                self.send(200, page("Page B", TEXT, ["/", "/a"]))
            elif path == "/deep1":
                self.send(200, page("Deep 1", TEXT, ["/deep2"]))
            elif path == "/deep2":
                self.send(200, page("Deep 2", TEXT, ["/deep3"]))
            elif path in ("/unlinked", "/redirected", "/deep3"):
                self.send(200, page(path.strip("/").title(), TEXT))
            elif path == "/private/secret":
                self.send(200, page("Secret", TEXT))
            elif path == "/old":
                self.send(301, headers={"Location": "/redirected"})
            elif path == "/loop1":
                self.send(302, headers={"Location": f"{site.base}/loop2"})
            elif path == "/loop2":
                self.send(302, headers={"Location": "/loop1"})
            elif path == "/slow":
                if n == 1:
                    time.sleep(0.6)  # past the crawler's 0.25 s timeout: it gives up and retries
                self.send(200, page("Slow", TEXT))
            elif path == "/flaky":
                self.send(500) if n == 1 else self.send(200, page("Flaky", TEXT))
            elif path == "/broken":
                self.send(500)
            elif path == "/file.bin":
                self.send(200, bytes(range(256)) * 64, "application/octet-stream")
            elif path == "/notes.txt":
                self.send(200, TEXT.encode(), "text/plain; charset=utf-8")
            else:
                self.send(404, b"not found", "text/plain")

    return Handler


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(s))
    server.daemon_threads = True
    s.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield s
    finally:
        server.shutdown()
        server.server_close()


def source(site: Site, **kw: object) -> CrawlSource:
    cfg: dict[str, object] = dict(name="web", seeds=[f"{site.base}/"], rate_per_host=RATE, concurrency_per_host=2,
                                  timeout_s=0.25, retries=2, backoff_s=0.05, max_depth=2, max_pages=50,
                                  user_agent="gristmill-test/1.0", license="CC0")
    cfg.update(kw)
    return CrawlSource(**cfg)


def crawl(src: CrawlSource, state: Path, stop_after: int | None = None) -> tuple[list[Document], list, Crawler]:
    drops: list[tuple[str, Document]] = []
    stats = StepStats("crawl", quarantine=lambda d, step, reason: drops.append((reason, d)))
    crawler = Crawler(src, state)
    docs: list[Document] = []
    gen = crawler.run([], stats)
    deadline = time.monotonic() + 15  # a bound on the whole crawl, whatever goes wrong
    for doc in gen:
        docs.append(doc)
        assert time.monotonic() < deadline, "the crawl ran too long"
        if stop_after is not None and len(docs) >= stop_after:
            gen.close()
            break
    return docs, drops, crawler


def test_crawl_fetches_skips_and_says_why(site: Site, tmp_path: Path) -> None:
    docs, drops, crawler = crawl(source(site), tmp_path / "state")
    b = site.base
    got = {d.provenance.uri for d in docs}
    assert got == {f"{b}/", f"{b}/a", f"{b}/b", f"{b}/deep1", f"{b}/redirected", f"{b}/slow", f"{b}/flaky",
                   f"{b}/notes.txt", f"{b}/unlinked"}
    for d in docs:
        assert d.text.strip() and d.source == "web" and d.provenance.reader == "crawl"
        assert d.provenance.license == "CC0"
        assert d.meta["status"] == 200 and d.meta["fetched_at"].endswith("Z")
    by_uri = {d.provenance.uri: d for d in docs}
    assert by_uri[f"{b}/"].provenance.title == "Home" and by_uri[f"{b}/"].meta["depth"] == 0
    assert "polite request" in by_uri[f"{b}/"].text
    assert by_uri[f"{b}/a"].meta["depth"] == 1 and by_uri[f"{b}/deep1"].meta["depth"] == 2
    assert by_uri[f"{b}/redirected"].meta["redirected_from"] == f"{b}/old"
    assert by_uri[f"{b}/unlinked"].meta["depth"] == 1  # found through the sitemap only
    assert by_uri[f"{b}/notes.txt"].meta["content_type"] == "text/plain"
    assert by_uri[f"{b}/notes.txt"].text == TEXT.strip()

    reasons = {d.provenance.uri: (r, d.meta["detail"]) for r, d in drops}
    assert reasons[f"{b}/private/secret"][0] == "robots"
    assert reasons[f"{b}/broken"][0] == "http_status" and "3 attempts" in reasons[f"{b}/broken"][1]
    assert reasons[f"{b}/file.bin"][0] == "not_text"
    assert "application/octet-stream" in reasons[f"{b}/file.bin"][1]
    loop = [d for r, d in drops if r == "redirect_loop"]
    assert len(loop) == 1 and "loop1 -> " in loop[0].meta["detail"]
    assert sorted(r for r, _ in drops) == ["http_status", "not_text", "redirect_loop", "robots"]

    # What the server saw: robots.txt first, nothing disallowed, nothing outside 127.0.0.1, the slow and
    # flaky pages twice (a retry each), the broken one 1 + retries times, every other page once.
    paths = site.paths()
    assert paths[0] == "/robots.txt"
    assert "/private/secret" not in paths and "/deep2" not in paths  # robots; deeper than max_depth
    assert paths.count("/slow") == 2 and paths.count("/flaky") == 2 and paths.count("/broken") == 3
    once = [p for p in paths if p not in RETRIED]
    assert len(once) == len(set(once)), f"a page was fetched twice: {once}"
    assert {ua for *_, ua in site.log} == {"gristmill-test/1.0"}
    assert crawler.counts["links_out_of_scope"] >= 1 and crawler.counts["links_too_deep"] >= 1
    assert crawler.counts["retries"] == 4 and crawler.counts["sitemaps_read"] == 1

    # Politeness: request starts to the one host are at least 1/RATE apart (a little slack for the clock
    # of the server thread, which stamps the request once its headers are read).
    times = sorted(t for t, *_ in site.log)
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.7 / RATE, f"requests {min(gaps) * 1000:.0f} ms apart, rate limit is {1000 / RATE:.0f} ms"
    assert site.max_active == 2  # concurrency_per_host (the slow page holds one connection)


def test_resume_after_max_pages_does_not_refetch(site: Site, tmp_path: Path) -> None:
    state = tmp_path / "state"
    aux = ("/robots.txt", "/sitemap.xml")
    first, _, c1 = crawl(source(site, max_pages=3, concurrency=1), state)
    assert len(first) == 3 and c1.counts["resumed"] == 0
    saved = json.loads((state / "state.json").read_text())
    assert saved["pages_fetched"] == 3 and saved["frontier"]
    run_1 = site.paths()
    with open(state / "pages.jsonl", "ab") as f:
        f.write(b'{"url": "http://torn')  # as if the process died while writing a line
    pages_1 = [p for p in run_1 if p not in aux]
    assert len(set(pages_1)) == 3, pages_1

    # Stopped by the consumer after one more page: the state written on close keeps the rest.
    second, _, _ = crawl(source(site, max_pages=50, concurrency=1), state, stop_after=4)
    assert [d.provenance.uri for d in second[:3]] == [d.provenance.uri for d in first]  # re-emitted
    run_2 = site.paths(len(run_1))
    pages_2 = [p for p in run_2 if p not in aux]
    assert pages_2 and not set(pages_2) & set(pages_1)

    third, drops, c3 = crawl(source(site, max_pages=50), state)
    run_3 = site.paths(len(run_1) + len(run_2))
    pages_3 = [p for p in run_3 if p not in aux]
    assert not set(pages_3) & (set(pages_1) | set(pages_2)), "a page done in an earlier run was fetched again"
    assert run_1.count("/sitemap.xml") == 1 and "/sitemap.xml" not in run_2 + run_3  # its links were saved
    once = [p for p in site.paths() if p not in RETRIED + ("/robots.txt",)]
    assert len(once) == len(set(once)), f"a page was fetched twice: {once}"
    # The resumed crawl's output is the whole crawl, as if it had never stopped.
    assert len({d.provenance.uri for d in third}) == len(third) == 9
    assert {r for r, _ in drops} == {"http_status", "not_text", "redirect_loop", "robots"}
    assert c3.counts["resumed"] >= 4
    journal = (state / "pages.jsonl").read_bytes()
    assert journal.endswith(b"\n") and b"torn" not in journal


def test_crawl_delay_and_limit(site: Site, tmp_path: Path) -> None:
    site.robots_extra = "Crawl-delay: 0.2\n"  # slower than rate_per_host: robots.txt wins
    docs, _, crawler = crawl(source(site, limit=2, use_sitemaps=False, concurrency=1), tmp_path / "state")
    assert len(docs) == 2
    times = [t for t, *_ in site.log]
    assert len(times) == 3 and min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.18


def test_unreachable_robots_txt_means_no_pages(site: Site, tmp_path: Path) -> None:
    site.robots_status = 503
    docs, drops, _ = crawl(source(site, retries=1), tmp_path / "state")
    assert docs == [] and [r for r, _ in drops] == ["robots"]
    assert "503" in drops[0][1].meta["detail"] and "RFC 9309" in drops[0][1].meta["detail"]
    assert site.paths() == ["/robots.txt", "/robots.txt"]  # tried twice (one retry), then nothing else


def test_missing_robots_txt_means_no_rules(site: Site, tmp_path: Path) -> None:
    site.robots_status = 404
    docs, drops, _ = crawl(source(site, max_depth=1, use_sitemaps=False), tmp_path / "state")
    assert f"{site.base}/private/secret" in {d.provenance.uri for d in docs}


def test_resume_refuses_a_changed_crawl(site: Site, tmp_path: Path) -> None:
    state = tmp_path / "state"
    crawl(source(site, max_pages=2, use_sitemaps=False), state)
    with pytest.raises(ConfigError, match="max_depth"):
        crawl(source(site, max_pages=2, max_depth=5, use_sitemaps=False), state)


def test_scope_allow_list_and_robots_off(site: Site, tmp_path: Path) -> None:
    src = source(site, scope="allow_list", allow=[f"{site.base}/a"], respect_robots=False, use_sitemaps=False)
    docs, drops, _ = crawl(src, tmp_path / "state")
    assert {d.provenance.uri for d in docs} == {f"{site.base}/", f"{site.base}/a"}
    assert "/robots.txt" not in site.paths() and drops == []


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="absolute http"):
        CrawlSource(name="x", seeds=["example.org"])
    with pytest.raises(ValueError, match="allow"):
        CrawlSource(name="x", seeds=["https://example.org/"], scope="allow_list")
    with pytest.raises(ValueError):
        CrawlSource(name="x", seeds=["https://example.org/"], rate_per_host=0)


def test_normalize_url() -> None:
    assert normalize_url("HTTP://Example.ORG:80/a#frag") == "http://example.org/a"
    assert normalize_url("../b?q=1", base="https://example.org:8443/x/y") == "https://example.org:8443/b?q=1"
    assert normalize_url("mailto:x@example.org") is None
    assert normalize_url("https://example.org") == "https://example.org/"
    assert normalize_url("https://Bücher.example/straße?q=ä b") == "https://xn--bcher-kva.example/stra%C3%9Fe?q=%C3%A4%20b"
    assert normalize_url("https://example.org/a%20b") == "https://example.org/a%20b"  # not encoded twice


def test_crawl_source_through_the_collect_stage_resumes_and_extends(site: Site, tmp_path: Path) -> None:
    """A crawl source in a recipe: its state lives in collect/crawl/<name>/, a larger max_pages extends the
    crawl without fetching a page twice, and a changed scope starts it over."""
    from gristmill.core.workspace import StageContext
    from gristmill.data.config import CollectConfig
    from gristmill.formats.document import read_documents, read_quarantine
    from gristmill.stages.collect import run as run_collect

    ctx = StageContext(run_dir=tmp_path, stage="collect", seed=1, log=lambda m: None)
    ctx.out_dir.mkdir()
    base = source(site).model_dump(mode="json")

    def run(**kw: object) -> tuple[dict, list, list]:
        stats = run_collect(ctx, CollectConfig(sources=[{**base, **kw}]))
        return stats, list(read_documents(ctx.out_dir)), list(read_quarantine(ctx.out_dir))

    stats, docs, _ = run(max_pages=4, concurrency=1)
    assert len(docs) == stats["documents"] == stats["sources"]["web"]["documents"] >= 3
    assert (ctx.out_dir / "crawl" / "web" / "state.json").is_file()
    assert all(d.provenance.retrieved_at and d.provenance.retrieved_at.endswith("Z") for d in docs)
    fetched = [p for p in site.paths() if p not in ("/robots.txt", "/sitemap.xml")]
    stats, docs, quarantine = run(max_pages=50)
    assert {d.provenance.uri for d in docs} >= {f"{site.base}/", f"{site.base}/a", f"{site.base}/unlinked"}
    assert len(docs) == 9 and {q["reason"] for q in quarantine} == {"http_status", "not_text", "redirect_loop", "robots"}
    once = [p for p in site.paths() if p not in RETRIED + ("/robots.txt", "/sitemap.xml")]
    assert len(once) == len(set(once)) and set(fetched) <= set(once), "a page was fetched twice"
    stats, docs, _ = run(max_pages=50, max_depth=0, use_sitemaps=False)  # another scope: a new crawl
    assert [d.provenance.uri for d in docs] == [f"{site.base}/"]
