"""The ``crawl`` reader: pages fetched from the live web, politely, into documents.

Starting at the seed URLs, the crawler follows links breadth-first within a scope (the seeds' hosts, or
an allow-list), to ``max_depth`` hops and ``max_pages`` requests. It is a polite crawler: it reads each
host's robots.txt first (RFC 9309: a 4xx means no rules, an unreachable file means stay away), keeps to
``rate_per_host`` and ``concurrency_per_host`` (or the ``Crawl-delay`` robots.txt asks for, if slower),
sends an honest User-Agent, and reads sitemaps to find pages nothing links to. Redirects are followed
one hop at a time, so each hop is checked against the scope, robots.txt and earlier hops (a loop). A
timeout, a connection error, a 429 or a 5xx is retried with exponential back-off.

HTML goes through the same extractor as web archives (``warc.WebText``); ``text/plain`` is kept as it is;
other types are quarantined as ``not_text`` without their body being downloaded.

**Resuming.** The crawl's state lives in ``state_dir``: ``pages.jsonl``, a journal with one line per
finished URL (its document or quarantine stub, and the links it added), appended as each page finishes;
and ``state.json``, a snapshot of the frontier, the seen and the done URLs, written atomically every few
pages. A later run loads the snapshot, replays the journal lines written after it, and carries on:
pages already done are never fetched again. Because the stage that consumes this step may not have kept
the earlier run's output, a run first re-emits every journaled document and drop, then crawls on, so its
output is always the whole crawl so far. Raising ``max_pages`` and running again extends a crawl.

Quarantine reasons: ``robots`` (disallowed, or robots.txt unreachable), ``noindex`` (a robots meta tag),
``http_status`` (not 2xx, after retries for 429/5xx), ``fetch_failed`` (timeouts or connection errors on
every attempt), ``redirect_loop``, ``too_many_redirects``, ``redirect_out_of_scope``, ``duplicate`` (a
redirect to a URL the crawl fetches anyway), ``not_text``, ``too_large``, ``undecodable``, ``empty`` and
``extraction_failed``. Links out of scope or too deep are not records; ``counts`` tallies them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

from gristmill.core.workspace import write_json
from gristmill.data.readers.files import document_id
from gristmill.data.readers.warc import (
    HTML_TYPES,
    Unusable,
    WebText,
    decode_body,
    decode_text,
    parse_content_type,
)
from gristmill.data.step import StepStats
from gristmill.data.web_config import CrawlSource
from gristmill.errors import ConfigError, InputError
from gristmill.formats.document import Document, Provenance

STATE_FILE = "state.json"
JOURNAL_FILE = "pages.jsonl"
STATE_VERSION = 1
CHECKPOINT_PAGES = 25
"""Snapshot the state after this many finished pages (the journal covers the pages in between)."""
CHECKPOINT_SECONDS = 30.0
"""... or after this many seconds, whichever comes first."""
ROBOTS_MAX_BYTES = 512 * 1024
"""RFC 9309 asks crawlers to parse at least the first 500 KiB of a robots.txt."""
MAX_SITEMAPS_PER_HOST = 20
"""Sitemaps (and sitemap indexes) read per host, at most: a bound on sitemap indexes that nest or loop."""
MAX_LINKS_PER_PAGE = 5000
"""Links taken from one page, at most: a bound on generated link farms."""
MAX_RETRY_AFTER_S = 600.0
MAX_CRAWL_DELAY_S = 300.0
"""A longer robots.txt Crawl-delay is taken as this: one page per five minutes is as slow as a crawl goes."""
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
UNRESUMABLE_KEYS = frozenset({"max_pages", "limit", "weight", "rate_per_host", "concurrency_per_host", "concurrency",
                              "timeout_s", "retries", "backoff_s"})
"""Config keys that may change between runs of one crawl; any other change makes the saved state stale."""
URL_SAFE = "/%:@!$&'()*+,;=-._~"
"""Characters left as they are when a URL is percent-encoded (RFC 3986 reserved and unreserved, and %)."""
ACCEPT = "text/html,application/xhtml+xml;q=0.9,text/plain;q=0.8,*/*;q=0.1"


def normalize_url(url: str, base: str | None = None) -> str | None:
    """An absolute http(s) URL in one canonical spelling (lower-case scheme and host, no default port, no
    fragment, ``/`` for an empty path), so that one page is not fetched twice; None for other schemes."""
    try:
        parts = urlsplit(urljoin(base, url.strip()) if base else url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    elif not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if port is not None and port != (80 if scheme == "http" else 443):
        host = f"{host}:{port}"
    # Non-ASCII characters are sent percent-encoded (as UTF-8); what is encoded already stays as it is.
    path = quote(parts.path or "/", safe=URL_SAFE)
    query = quote(parts.query, safe=URL_SAFE + "?")
    return urlunsplit((scheme, host, path, query, ""))


def host_of(url: str) -> str:
    """``https://example.org:8443/a`` -> ``https://example.org:8443`` (of a normalised URL): the unit of
    politeness, since robots.txt and rate limits are per scheme, host and port."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def crawl_delay(robots_txt: str, agent: str) -> float | None:
    """The ``Crawl-delay`` (seconds) that robots.txt sets for ``agent``: its own group's, else the ``*``
    group's. Parsed here because urllib.robotparser reads only whole seconds, and sites write ``0.5``."""
    delays: dict[str, float] = {}
    group: list[str] = []
    in_agents = False
    for raw in robots_txt.splitlines():
        key, _, value = raw.split("#", 1)[0].partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "user-agent":
            group = group + [value.lower()] if in_agents else [value.lower()]
            in_agents = True
            continue
        in_agents = False
        if key == "crawl-delay":
            try:
                seconds = float(value)
            except ValueError:
                continue
            if not math.isfinite(seconds) or seconds < 0:
                continue
            seconds = min(seconds, MAX_CRAWL_DELAY_S)
            for name in group:
                delays.setdefault(name, seconds)
    agent = agent.lower()
    own = [d for name, d in delays.items() if name != "*" and name in agent]
    return own[0] if own else delays.get("*")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Scope:
    """Which URLs the crawl may follow."""

    def __init__(self, source: CrawlSource):
        self.kind = source.scope
        self.seeds = {normalize_url(s) for s in source.seeds}
        self.hosts = {host_of(s) for s in self.seeds if s}
        self.prefixes: list[str] = []
        self.domains: list[str] = []
        for entry in source.allow:
            if "://" in entry:
                self.prefixes.append(normalize_url(entry) or entry)
            else:
                self.domains.append(entry.strip().lower().strip("."))

    def __contains__(self, url: str) -> bool:
        if url in self.seeds:
            return True
        if self.kind == "host":
            return host_of(url) in self.hosts
        if any(url.startswith(p) for p in self.prefixes):
            return True
        name = urlsplit(url).hostname or ""
        return any(name == d or name.endswith("." + d) for d in self.domains)


class _PageLinks(HTMLParser):
    """Links of an HTML page (``<a href>`` not marked nofollow, resolved against ``<base href>``) and its
    robots meta directives."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.base: str | None = None
        self.noindex = False
        self.nofollow = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("a", "area", "base", "meta"):
            return
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "base" and self.base is None and a.get("href"):
            self.base = a["href"]
        elif tag == "meta" and a.get("name", "").lower() == "robots":
            words = {w.strip().lower() for w in a.get("content", "").split(",")}
            self.noindex |= bool(words & {"noindex", "none"})
            self.nofollow |= bool(words & {"nofollow", "none"})
        elif tag in ("a", "area") and a.get("href") and "nofollow" not in a.get("rel", "").lower().split():
            if len(self.hrefs) < MAX_LINKS_PER_PAGE:
                self.hrefs.append(a["href"])


@dataclass
class _Task:
    """One frontier URL on its way to a result: its retries and redirect hops happen under this task."""

    url: str
    """The frontier URL (what ``done`` records)."""
    depth: int
    kind: str = "page"
    """``page``, or ``robots`` / ``sitemap`` (requests that serve the crawl, not records)."""
    current: str = ""
    """The URL requested next (differs from ``url`` after a redirect)."""
    hops: list[str] = field(default_factory=list)
    """URLs requested before ``current`` in this task's redirect chain."""
    attempt: int = 0
    """Failed attempts on ``current`` so far."""
    not_before: float = 0.0
    """Monotonic time before which the task waits (back-off)."""
    started: bool = False
    """Whether a request was sent for it (what ``max_pages`` counts)."""

    def __post_init__(self) -> None:
        self.current = self.current or self.url


@dataclass
class _Response:
    """What one HTTP request got; made in a worker thread, read in the crawler's thread."""

    url: str
    status: int | None = None
    """None when there was no HTTP response (see ``error``)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Response headers, names lower-cased."""
    body: bytes | None = None
    error: str | None = None
    """Why there is no response: a timeout, a refused connection ..."""
    retryable: bool = True
    skipped: tuple[str, str] | None = None
    """(reason, detail) when the body was deliberately not downloaded (``not_text``, ``too_large``)."""
    fetched_at: str = ""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Hand 3xx responses back instead of following them: each hop is checked by the crawler."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


@dataclass
class _Host:
    """Politeness state of one scheme://host:port."""

    interval: float
    """Seconds between request starts."""
    next_at: float = 0.0
    """Monotonic time before which no request may start."""
    last_start: float = 0.0
    in_flight: int = 0
    robots: RobotFileParser | None = None
    robots_state: str = "unknown"
    """``unknown`` -> ``queued`` -> ``ready``; pages wait for ``ready`` when robots.txt is respected."""
    robots_problem: str | None = None
    """Set when robots.txt was unreachable: every page of the host is then off limits."""
    sitemaps: int = 0
    queue: deque[_Task] = field(default_factory=deque)
    """Frontier pages, in discovery order (breadth-first)."""
    aux: deque[_Task] = field(default_factory=deque)
    """robots.txt and sitemap requests (and their retries and redirect hops); they go before pages."""
    retry: list[_Task] = field(default_factory=list)
    """Started pages waiting to go again (a retry after back-off, the next hop of a redirect), earliest
    first."""


class Crawler:
    """A step that yields documents fetched from the web; see the module docstring.

    ``counts`` tallies what is not a record: ``requests``, ``retries``, ``robots_fetched``,
    ``sitemaps_read``, ``sitemap_failed``, ``links_out_of_scope``, ``links_too_deep``, ``resumed``.
    """

    name = "crawl"

    def __init__(self, source: CrawlSource, state_dir: Path):
        self.source = source
        self.state_dir = Path(state_dir)
        self.web = WebText(source, f"crawl source '{source.name}'")
        self.scope = _Scope(source)
        self.counts: Counter[str] = Counter()
        self._robots_agent = (source.user_agent.split("/", 1)[0].split() or ["*"])[0]
        """The product token robots.txt groups are matched against (``gristmill-crawler``)."""
        self._hosts: dict[str, _Host] = {}
        self._frontier: dict[str, int] = {}
        """Unfinished URLs (queued, waiting or in flight) -> depth, in discovery order."""
        self._seen: set[str] = set()
        self._done: set[str] = set()
        self._claimed: set[str] = set()
        """Redirect targets that a task in progress is about to fetch (seen only once it finishes, so that a
        run stopped meanwhile does not take them for done)."""
        self._sitemaps_read: set[str] = set()
        self._pages_finished = 0
        """Finished pages that sent a request (what ``max_pages`` counts, with ``_pages_started``)."""
        self._pages_started = 0
        self._kept = 0
        self._journal_bytes = 0
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()

    # -- the step ------------------------------------------------------------------------------------------

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        yield from docs
        self._load_state()
        yield from self._replay(stats)
        pool = ThreadPoolExecutor(max_workers=self.source.concurrency, thread_name_prefix="gristmill-crawl")
        in_flight: dict[Future[_Response], _Task] = {}
        try:
            while True:
                self._dispatch(pool, in_flight, stats)
                wake = self._next_wake()
                if not in_flight:
                    if wake is None:
                        break
                    time.sleep(min(max(wake - time.monotonic(), 0.0), 1.0))
                    continue
                full = len(in_flight) >= self.source.concurrency
                timeout = None if wake is None or full else max(wake - time.monotonic(), 0.0)
                finished, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
                for fut in finished:
                    task = in_flight.pop(fut)
                    self._host(task.current).in_flight -= 1
                    doc = self._handle(task, fut.result(), stats)
                    if doc is not None and self._limit_left():
                        self._kept += 1
                        yield doc
        finally:
            # Stopped early or done: unfinished tasks are still in the frontier, so the next run resumes them.
            pool.shutdown(wait=False, cancel_futures=True)
            self._checkpoint()

    # -- scheduling ----------------------------------------------------------------------------------------

    def _limit_left(self) -> bool:
        return self.source.limit is None or self._kept < self.source.limit

    def _budget_left(self) -> bool:
        return self._pages_started < self.source.max_pages and self._limit_left()

    def _host(self, url: str) -> _Host:
        key = host_of(url)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(interval=1.0 / self.source.rate_per_host)
        return host

    def _enqueue(self, task: _Task) -> None:
        """Queue a page task on its host, asking for the host's robots.txt (or sitemaps) the first time."""
        host = self._host(task.current)
        if host.robots_state == "unknown":
            key = host_of(task.current)
            if self.source.respect_robots:
                host.robots_state = "queued"
                host.aux.append(_Task(url=f"{key}/robots.txt", depth=0, kind="robots"))
            else:
                host.robots_state = "ready"
                self._queue_sitemaps(key, host, [])
        if task.started:
            host.retry.append(task)
            host.retry.sort(key=lambda t: t.not_before)
        else:
            host.queue.append(task)

    def _candidates(self, host: _Host) -> list[tuple[deque[_Task] | list[_Task], float]]:
        """The host's queues that have a task to start, in priority order, with the time it may start.

        robots.txt goes first (pages wait for it); then started pages (retries, redirect hops), so a page in
        progress finishes before new ones begin; then sitemaps and new pages, while the budget lasts.
        """
        budget = self._budget_left()
        out: list[tuple[deque[_Task] | list[_Task], float]] = []
        if host.aux and (host.aux[0].kind == "robots" or budget):
            out.append((host.aux, host.aux[0].not_before))
        if host.retry and self._robots_ready(host, host.retry[0]):
            out.append((host.retry, host.retry[0].not_before))
        if host.queue and budget and self._robots_ready(host, host.queue[0]):
            out.append((host.queue, 0.0))
        return out

    def _next_task(self, host: _Host, now: float, stats: StepStats) -> _Task | None:
        """The task this host may start now, or None; pages that robots.txt forbids are finished here."""
        while True:
            for tasks, ready in self._candidates(host):
                if ready <= now:
                    task = tasks.popleft() if isinstance(tasks, deque) else tasks.pop(0)
                    break
            else:
                return None
            blocked = self._robots_block(host, task.current) if task.kind == "page" else None
            if blocked is None:
                return task
            self._claimed.discard(task.current)
            self._finish(task, stats, reason="robots", detail=blocked, fetched=task.started)

    def _robots_ready(self, host: _Host, task: _Task) -> bool:
        return not self.source.respect_robots or task.kind != "page" or host.robots_state == "ready"

    def _robots_block(self, host: _Host, url: str) -> str | None:
        """Why robots.txt forbids ``url``, or None if it may be fetched."""
        if not self.source.respect_robots:
            return None
        if host.robots_problem:
            return host.robots_problem
        if host.robots is not None and not host.robots.can_fetch(self._robots_agent, url):
            return f"robots.txt of {host_of(url)} disallows {urlsplit(url).path or '/'} for {self._robots_agent}"
        return None

    def _dispatch(self, pool: ThreadPoolExecutor, in_flight: dict[Future[_Response], _Task],
                  stats: StepStats) -> None:
        """Start every request the limits allow now: total and per-host concurrency, per-host rate."""
        progressed = True
        while progressed:
            progressed = False
            for host in list(self._hosts.values()):
                if len(in_flight) >= self.source.concurrency:
                    return
                now = time.monotonic()
                if host.in_flight >= self.source.concurrency_per_host or now < host.next_at:
                    continue
                task = self._next_task(host, now, stats)
                if task is None:
                    continue
                if task.kind == "page" and not task.started:
                    task.started = True
                    self._pages_started += 1
                task.not_before = 0.0
                host.in_flight += 1
                host.last_start, host.next_at = now, now + host.interval
                self.counts["requests"] += 1
                limit = ROBOTS_MAX_BYTES if task.kind == "robots" else self.source.max_bytes
                in_flight[pool.submit(self._fetch, task.current, task.kind, limit)] = task
                progressed = True

    def _next_wake(self) -> float | None:
        """The monotonic time at which some host could start a request, or None if nothing is waiting
        (beyond what the requests in flight will bring)."""
        wakes = []
        for host in self._hosts.values():
            if host.in_flight >= self.source.concurrency_per_host:
                continue  # a finishing request wakes the loop
            ready = [t for _, t in self._candidates(host)]
            if ready:
                wakes.append(max(min(ready), host.next_at))
        return min(wakes) if wakes else None

    # -- fetching (worker threads: no crawler state is touched here) ---------------------------------------

    def _fetch(self, url: str, kind: str, max_bytes: int) -> _Response:
        """One GET without following redirects; a page's body is read only if its type is wanted."""
        out = _Response(url=url, fetched_at=_utc_now())
        req = urllib.request.Request(url, headers={"User-Agent": self.source.user_agent, "Accept": ACCEPT})
        opener = urllib.request.build_opener(_NoRedirects)
        deadline = time.monotonic() + self.source.timeout_s
        try:
            resp = opener.open(req, timeout=self.source.timeout_s)
        except urllib.error.HTTPError as e:  # 3xx (not followed), 4xx, 5xx: a response all the same
            out.status, out.headers = e.code, {k.lower(): v for k, v in e.headers.items()}
            e.close()
            return out
        except urllib.error.URLError as e:
            out.error = f"cannot connect: {e.reason}"
            return out
        except (TimeoutError, OSError, HTTPException) as e:
            out.error = self._error_text(e)
            return out
        except ValueError as e:
            out.error, out.retryable = f"not a fetchable URL ({e})", False
            return out
        with resp:
            out.status, out.headers = resp.status, {k.lower(): v for k, v in resp.headers.items()}
            if kind == "page":
                mime, _ = parse_content_type(out.headers.get("content-type"))
                if not self.web.accepts(mime):
                    out.skipped = ("not_text", self.web.not_text_detail(mime))
                    return out
                declared = out.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    out.skipped = ("too_large", f"Content-Length is {declared} bytes, over max_bytes={max_bytes}")
                    return out
            try:
                # RFC 9309: a robots.txt longer than the cap is parsed up to the cap.
                out.body = self._read_body(resp, deadline, max_bytes, cut=kind == "robots")
            except _TooLarge:
                out.skipped = ("too_large", f"the body is over max_bytes={max_bytes}")
            except (TimeoutError, OSError, HTTPException) as e:
                out.status, out.error = None, self._error_text(e)
        return out

    def _read_body(self, resp: Any, deadline: float, max_bytes: int, cut: bool) -> bytes:
        """The body, read against the deadline; past ``max_bytes`` it is cut there, or :class:`_TooLarge`."""
        parts, size = [], 0
        while chunk := resp.read(65536):
            size += len(chunk)
            if size > max_bytes:
                if cut:
                    parts.append(chunk)
                    return b"".join(parts)[:max_bytes]
                raise _TooLarge
            parts.append(chunk)
            if time.monotonic() > deadline:  # a server that trickles bytes cannot hold a worker for ever
                raise TimeoutError(f"the body took longer than timeout_s={self.source.timeout_s}")
        return b"".join(parts)

    def _error_text(self, e: BaseException) -> str:
        if isinstance(e, TimeoutError):
            return f"timed out after {self.source.timeout_s:g} s"
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__

    # -- results (the crawler's thread) --------------------------------------------------------------------

    def _handle(self, task: _Task, res: _Response, stats: StepStats) -> Document | None:
        if (res.error and res.retryable) or res.status in RETRY_STATUSES:
            if task.attempt < self.source.retries:
                self._retry(task, res)
                return None
        if res.status is not None and 300 <= res.status < 400 and res.headers.get("location"):
            return self._redirect(task, res, stats)
        if task.kind == "robots":
            self._robots_result(task, res)
            return None
        if task.kind == "sitemap":
            self._sitemap_result(task, res)
            return None
        attempts = task.attempt + 1
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        self._claimed.discard(task.current)
        if res.error:
            return self._finish(task, stats, "fetch_failed", f"{res.error}{tries}", fetched=True)
        assert res.status is not None
        if not 200 <= res.status < 300:
            return self._finish(task, stats, "http_status", f"HTTP {res.status}{tries}", res=res, fetched=True)
        if res.skipped:
            return self._finish(task, stats, *res.skipped, res=res, fetched=True)
        return self._page(task, res, stats)

    def _retry(self, task: _Task, res: _Response) -> None:
        task.attempt += 1
        delay = self.source.backoff_s * 2 ** (task.attempt - 1)
        after = res.headers.get("retry-after", "")
        if after.strip().isdigit():
            delay = max(delay, min(float(after), MAX_RETRY_AFTER_S))
        task.not_before = time.monotonic() + delay
        self.counts["retries"] += 1
        if task.kind == "page":
            self._enqueue(task)
        else:  # robots.txt and sitemaps keep their place ahead of pages
            self._host(task.current).aux.appendleft(task)

    def _redirect(self, task: _Task, res: _Response, stats: StepStats) -> Document | None:
        loc = res.headers["location"]
        target = normalize_url(loc, base=task.current)
        chain = [*task.hops, task.current]
        if task.kind != "page":  # robots.txt and sitemaps: hops are followed within limits, whatever the scope
            if target is None or target in chain or len(chain) > self.source.max_redirects:
                failed = _Response(url=task.current, error=f"a redirect to {loc!r} that is not followed",
                                   fetched_at=res.fetched_at)
                if task.kind == "robots":
                    self._robots_result(task, failed)
                else:
                    self._sitemap_result(task, failed)
            else:
                task.hops, task.current, task.attempt = chain, target, 0
                self._host(target).aux.appendleft(task)
            return None
        self._claimed.discard(task.current)
        if target is None:
            return self._finish(task, stats, "http_status", f"HTTP {res.status} redirect to {loc!r}, not an "
                                f"http(s) URL", res=res, fetched=True)
        if target in chain:
            path = " -> ".join([*chain, target])
            return self._finish(task, stats, "redirect_loop", f"redirects in a loop: {path}", res=res, fetched=True)
        if len(chain) > self.source.max_redirects:
            return self._finish(task, stats, "too_many_redirects", f"more than max_redirects="
                                f"{self.source.max_redirects} redirects, the last to {target}", res=res, fetched=True)
        if target not in self.scope:
            return self._finish(task, stats, "redirect_out_of_scope", f"redirects to {target}, outside the "
                                f"crawl's scope", res=res, fetched=True)
        if target in self._seen or target in self._claimed:
            return self._finish(task, stats, "duplicate", f"redirects to {target}, which the crawl reaches "
                                f"on its own", res=res, fetched=True)
        self._claimed.add(target)
        task.hops, task.current, task.attempt = chain, target, 0
        self._enqueue(task)
        return None

    def _page(self, task: _Task, res: _Response, stats: StepStats) -> Document | None:
        mime, charset = parse_content_type(res.headers.get("content-type"))
        body = res.body or b""
        links: list[str] = []
        try:
            body = decode_body(body, None, res.headers.get("content-encoding"), self.source.max_bytes)
            noindex = False
            if mime in HTML_TYPES:
                parsed = self._links(decode_text(body, charset, True), res.url)
                noindex = parsed.noindex and self.source.respect_robots
                links = [] if parsed.nofollow and self.source.respect_robots else parsed.hrefs
            if noindex:
                raise Unusable("noindex", "the page's robots meta tag says noindex")
            text, title = self.web.text(body, mime, charset, res.url)
        except Unusable as u:
            return self._finish(task, stats, u.reason, u.detail, res=res, fetched=True, links=links)
        doc = self._doc(res.url, text, title)
        doc.provenance.retrieved_at = res.fetched_at or None
        doc.meta.update(self._meta(task, res))
        lang = res.headers.get("content-language")
        if lang:
            doc.meta["language"] = lang.split(",", 1)[0].strip()
        return self._finish(task, stats, None, None, res=res, fetched=True, links=links, doc=doc)

    def _links(self, html: str, url: str) -> _PageLinks:
        parser = _PageLinks()
        try:
            parser.feed(html)
            parser.close()
        except (AssertionError, ValueError):  # html.parser gives up on some broken markup; keep what it found
            pass
        base = normalize_url(parser.base, base=url) if parser.base else url
        parser.hrefs = [u for h in parser.hrefs if (u := normalize_url(h, base=base or url))]
        return parser

    def _robots_result(self, task: _Task, res: _Response) -> None:
        host = self._host(task.url)
        key = host_of(task.url)
        host.robots_state = "ready"
        self.counts["robots_fetched"] += 1
        rp = RobotFileParser(task.url)
        if res.status is not None and 200 <= res.status < 300:
            text = decode_text(res.body or b"", "utf-8", False)
            rp.parse(text.splitlines())
            host.robots = rp
            delay = crawl_delay(text, self._robots_agent)
            rate = rp.request_rate(self._robots_agent)
            slowest = max(delay or 0.0, rate.seconds / rate.requests if rate and rate.requests else 0.0)
            if slowest > host.interval:  # the wait after robots.txt itself counts too
                host.interval = slowest
                host.next_at = max(host.next_at, host.last_start + slowest)
            sitemaps = rp.site_maps() or []
        elif res.status is not None and 400 <= res.status < 500:
            sitemaps = []  # RFC 9309: robots.txt is unavailable, so there are no rules
        else:
            what = res.error or f"HTTP {res.status}"
            host.robots_problem = (f"robots.txt of {key} could not be read ({what}); RFC 9309 says to crawl "
                                   f"none of the host then")
            return
        self._queue_sitemaps(key, host, sitemaps)

    def _queue_sitemaps(self, key: str, host: _Host, listed: list[str]) -> None:
        if not self.source.use_sitemaps or key in self._sitemaps_read:
            return
        urls = [u for s in listed if (u := normalize_url(s)) and host_of(u) == key] or [f"{key}/sitemap.xml"]
        for url in urls[:MAX_SITEMAPS_PER_HOST]:
            host.sitemaps += 1
            host.aux.append(_Task(url=url, depth=1, kind="sitemap"))
        self._sitemaps_read.add(key)

    def _sitemap_result(self, task: _Task, res: _Response) -> None:
        if res.status is None or not 200 <= res.status < 300 or res.body is None:
            self.counts["sitemap_failed"] += 1
            return
        body = res.body
        if body[:2] == b"\x1f\x8b":
            try:
                body = zlib.decompressobj(wbits=31).decompress(body, self.source.max_bytes)
            except zlib.error:
                self.counts["sitemap_failed"] += 1
                return
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            self.counts["sitemap_failed"] += 1
            return
        self.counts["sitemaps_read"] += 1
        is_index = root.tag.rpartition("}")[2] == "sitemapindex"
        host = self._host(task.url)
        key = host_of(task.url)
        for elem in root.iter():
            if elem.tag.rpartition("}")[2] != "loc" or not elem.text:
                continue
            url = normalize_url(elem.text)
            if url is None:
                continue
            if is_index:
                if host_of(url) == key and host.sitemaps < MAX_SITEMAPS_PER_HOST:
                    host.sitemaps += 1
                    host.aux.append(_Task(url=url, depth=1, kind="sitemap"))
            else:
                self._discover(url, 1)
        self._checkpoint()  # sitemap links are in no journal line: save them now

    def _discover(self, url: str, depth: int) -> bool:
        """Add a found URL to the frontier if it is new, in scope and not too deep."""
        if url in self._seen or url in self._claimed:
            return False
        if url not in self.scope:
            self.counts["links_out_of_scope"] += 1
            return False
        if depth > self.source.max_depth:
            self.counts["links_too_deep"] += 1
            return False
        self._seen.add(url)
        self._frontier[url] = depth
        self._enqueue(_Task(url=url, depth=depth))
        return True

    # -- finishing a page: journal, counts, documents ------------------------------------------------------

    def _finish(self, task: _Task, stats: StepStats, reason: str | None, detail: str | None, *,
                res: _Response | None = None, fetched: bool, links: list[str] | None = None,
                doc: Document | None = None) -> Document | None:
        """Record a page's outcome (journal first, so a crash after this line never refetches it)."""
        added = [u for u in (links or []) if self._discover(u, task.depth + 1)]
        if doc is None:
            doc = self._doc(res.url if res else task.current, "", None)
            if res is not None:
                doc.meta.update(self._meta(task, res))
            doc.meta["detail"] = detail
        final = res.url if res else task.current
        self._frontier.pop(task.url, None)
        self._done.update((task.url, final))
        self._seen.add(final)
        self._pages_finished += fetched
        line = {"url": task.url, "final": final, "fetched": fetched, "reason": reason, "doc": asdict(doc),
                "links": [[u, task.depth + 1] for u in added]}
        self._append_journal(line)
        if reason is not None:
            stats.drop(doc, reason)
            return None
        return doc

    def _doc(self, url: str, text: str, title: str | None) -> Document:
        return Document(id=document_id(self.source.name, url, None), text=text, source=self.source.name,
                        provenance=Provenance(uri=url, reader=self.name, title=title, license=self.source.license))

    @staticmethod
    def _meta(task: _Task, res: _Response) -> dict[str, Any]:
        mime, _ = parse_content_type(res.headers.get("content-type"))
        return {"fetched_at": res.fetched_at, "status": res.status, "content_type": mime or None,
                "depth": task.depth, "redirected_from": task.url if task.hops else None}

    # -- state on disk -------------------------------------------------------------------------------------

    def _config_key(self) -> dict[str, Any]:
        return self.source.model_dump(mode="json", exclude=set(UNRESUMABLE_KEYS))

    def _load_state(self) -> None:
        """Load ``state.json`` and replay the journal after it, or start from the seeds."""
        state_path = self.state_dir / STATE_FILE
        journal = self.state_dir / JOURNAL_FILE
        if not state_path.exists():
            if journal.exists() and journal.stat().st_size:
                raise InputError(f"{journal} has no {STATE_FILE} beside it; delete {self.state_dir} to start "
                                 f"the crawl over")
            for seed in self.source.seeds:
                url = normalize_url(seed)
                if url and url not in self._seen:
                    self._seen.add(url)
                    self._frontier[url] = 0
            self._checkpoint()
        else:
            self._restore(state_path)
        self._pages_started = self._pages_finished
        for url, depth in list(self._frontier.items()):
            self._enqueue(_Task(url=url, depth=depth))

    def _restore(self, state_path: Path) -> None:
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"version {state.get('version')!r}, expected {STATE_VERSION}")
            config = state["config"]
            frontier = {str(u): int(d) for u, d in state["frontier"]}
            seen, done = set(state["seen"]), set(state["done"])
            sitemaps_read, journal_bytes = set(state["sitemaps_read"]), int(state["journal_bytes"])
            pages = int(state["pages_fetched"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{state_path} is not a readable crawl state ({e}); delete {self.state_dir} to "
                             f"start the crawl over") from None
        changed = sorted(k for k in set(config) | set(self._config_key())
                         if config.get(k) != self._config_key().get(k))
        if changed:
            raise ConfigError(f"crawl source '{self.source.name}': the crawl saved in {self.state_dir} used "
                              f"different {', '.join(changed)}; restore them, or delete {self.state_dir} to "
                              f"start the crawl over")
        self._frontier, self._seen, self._done = frontier, seen, done
        self._sitemaps_read, self._pages_finished = sitemaps_read, pages
        self._journal_bytes = journal_bytes
        # Pages finished after the snapshot are in the journal only: apply them.
        for line in self._journal_lines(start=journal_bytes):
            self._frontier.pop(line["url"], None)
            self._done.update((line["url"], line["final"]))
            self._seen.add(line["final"])
            self._pages_finished += bool(line["fetched"])
            for url, depth in line["links"]:
                if url not in self._seen:
                    self._seen.add(url)
                    self._frontier[url] = depth

    def _journal_lines(self, start: int = 0) -> Iterator[dict[str, Any]]:
        """Journal entries from byte ``start``; a torn last line (a crash mid-write) is cut off the file."""
        path = self.state_dir / JOURNAL_FILE
        if not path.exists():
            return
        with open(path, "rb+") as f:
            f.seek(start)
            pos = start
            for raw in f:
                try:
                    if not raw.endswith(b"\n"):
                        raise ValueError("no newline")
                    entry = json.loads(raw)
                except ValueError:
                    f.truncate(pos)
                    break
                pos += len(raw)
                yield entry
            self._journal_bytes = max(self._journal_bytes, pos)

    def _replay(self, stats: StepStats) -> Iterator[Document]:
        """Re-emit every journaled outcome, so this run's output is the whole crawl so far."""
        for line in self._journal_lines():
            doc = Document.from_dict(line["doc"])
            self.counts["resumed"] += 1
            if line["reason"] is not None:
                stats.drop(doc, line["reason"])
            elif self._limit_left():
                self._kept += 1
                yield doc

    def _append_journal(self, line: dict[str, Any]) -> None:
        data = (json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n").encode()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / JOURNAL_FILE, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._journal_bytes += len(data)
        self._since_checkpoint += 1
        # A snapshot costs time in proportion to the URLs seen, so a large crawl takes one less often (the
        # journal keeps every page in between, so nothing is lost by waiting).
        every = max(CHECKPOINT_PAGES, len(self._seen) // 200)
        if self._since_checkpoint >= every or time.monotonic() - self._last_checkpoint > CHECKPOINT_SECONDS:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Write the snapshot atomically: a crash leaves the previous snapshot, and the journal after it."""
        write_json(self.state_dir / STATE_FILE, {
            "version": STATE_VERSION,
            "config": self._config_key(),
            "frontier": [[u, d] for u, d in self._frontier.items()],
            "seen": sorted(self._seen),
            "done": sorted(self._done),
            "sitemaps_read": sorted(self._sitemaps_read),
            "pages_fetched": self._pages_finished,
            "journal_bytes": self._journal_bytes,
            "saved_at": _utc_now(),
        })
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()


def discard_stale_state(source: CrawlSource, state_dir: Path) -> bool:
    """Delete a crawl's saved state if it was made with other scope keys (seeds, scope, depth ...) than
    ``source`` has now: the recipe changed, so the crawl starts over. Returns whether it did."""
    state_path = Path(state_dir) / STATE_FILE
    if not state_path.is_file():
        return False
    try:
        saved = json.loads(state_path.read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError, AttributeError):
        saved = None
    current = source.model_dump(mode="json", exclude=set(UNRESUMABLE_KEYS))
    if saved == current:
        return False
    shutil.rmtree(state_dir)
    return True


class _TooLarge(Exception):
    """A body passed ``max_bytes`` while being read."""

