"""Configs of the two web sources: ``warc`` (web archives on disk) and ``crawl`` (pages fetched live).

Both turn HTML into text the same way, so the extraction keys live in one base class. Each source has a
``type`` literal so the collect stage can pick the class from a recipe's ``type:`` key. Every number is
bounded, so a typo (a rate of 1000000 requests per second, a negative timeout) is a config error that
names the key instead of a crawl that misbehaves.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from gristmill.core.config import Config
from gristmill.data.source_config import SourceBase, SourceConfig

DEFAULT_MIME_TYPES = ("text/html", "application/xhtml+xml", "text/plain")
"""HTML pages and plain text: what a language model can learn from without a format-specific parser."""
DEFAULT_USER_AGENT = "gristmill-crawler/0.1"
"""Names the crawler honestly; sites match its first word (``gristmill-crawler``) in robots.txt."""


class WebTextOptions(Config):
    """How a web source turns a response body into text (shared by ``warc`` and ``crawl``)."""

    extractor: Literal["resiliparse", "trafilatura"] = "resiliparse"
    """HTML-to-text extractor: ``resiliparse`` (fast main-content extraction) or ``trafilatura`` (about 25
    times slower, often cleaner on article pages). Both come with the ``web`` extra."""
    main_content: bool = True
    """With ``resiliparse``: keep only the main content (navigation, menus, sidebars and footers found by
    resiliparse's heuristics are left out). False: every visible text block except ``<nav>``, ``<header>``,
    ``<footer>``, ``<aside>``, forms and hidden elements: on pywb's sample pages the extraction is 2.4 times
    as fast (1,200 pages per CPU second against 490) and the reader 1.7 times (700 pages a second per core
    against 400). trafilatura always keeps the main content."""
    min_chars: int = Field(1, ge=1, le=1_000_000)
    """Pages whose extracted text has fewer characters than this are quarantined as ``empty``."""
    mime_types: list[str] = Field(default_factory=lambda: list(DEFAULT_MIME_TYPES), min_length=1)
    """Content types read as text (parameters such as ``charset`` are ignored). HTML types go through the
    extractor; any other listed type (``text/plain``, ``text/markdown`` ...) is kept as it is. Everything
    else is quarantined as ``not_text``."""
    max_bytes: int = Field(10_000_000, ge=1024, le=1_000_000_000)
    """Bodies larger than this many bytes are quarantined as ``too_large`` without being read into memory."""

    @model_validator(mode="after")
    def _main_content_is_resiliparse(self) -> WebTextOptions:
        if not self.main_content and self.extractor != "resiliparse":
            raise ValueError(f"main_content: false needs extractor: resiliparse ({self.extractor} always "
                             f"extracts the main content)")
        return self

    @field_validator("mime_types")
    @classmethod
    def _normalise_mime_types(cls, v: list[str]) -> list[str]:
        out = [m.split(";", 1)[0].strip().lower() for m in v]
        for m in out:
            if m.count("/") != 1 or " " in m:
                raise ValueError(f"'{m}' is not a content type; write it as type/subtype, e.g. text/html")
        return out


class WarcSource(WebTextOptions, SourceConfig):
    """Web archives (WARC and the older ARC, plain or gzip): one document per HTML or text response."""

    type: Literal["warc"] = "warc"
    """``warc``: WARC/ARC files, plain or compressed, read as a stream record by record."""


class CrawlSource(WebTextOptions, SourceBase):
    """Pages fetched from the live web, starting at seed URLs and following links within a scope."""

    type: Literal["crawl"] = "crawl"
    """``crawl``: fetch pages from the web, politely (robots.txt, per-host rate limits). The crawl's state
    is kept in ``collect/crawl/<name>/``, so a stopped crawl resumes and a larger ``max_pages`` extends it."""
    seeds: list[str] = Field(min_length=1)
    """Absolute http(s) URLs the crawl starts from (depth 0)."""
    scope: Literal["host", "allow_list"] = "host"
    """Which links are followed: ``host`` keeps to the hosts of the seeds; ``allow_list`` follows only URLs
    that an ``allow`` entry matches."""
    allow: list[str] = []
    """For ``scope: allow_list``: URL prefixes (``https://example.org/docs/``) or bare host names
    (``example.org``, which also matches its subdomains). Seeds are always crawled."""
    max_pages: int = Field(100, ge=1, le=10_000_000)
    """Stop after requesting this many pages (retries and redirects of one URL count once; robots.txt and
    sitemaps do not count). A later run with a larger value resumes the crawl."""
    max_depth: int = Field(3, ge=0, le=1000)
    """Links followed from a seed at most this many hops deep (0: the seeds only). Pages listed in a
    sitemap count as depth 1."""
    rate_per_host: float = Field(1.0, gt=0, le=100)
    """Requests per second to any one host, at most (a robots.txt ``Crawl-delay`` that asks for less wins)."""
    concurrency_per_host: int = Field(2, ge=1, le=32)
    """Requests in flight to any one host, at most."""
    concurrency: int = Field(8, ge=1, le=256)
    """Requests in flight in all, at most (the size of the fetching thread pool)."""
    timeout_s: float = Field(10.0, gt=0, le=600)
    """Seconds to wait for a response and to read its body; a slower request counts as failed (and is
    retried)."""
    retries: int = Field(2, ge=0, le=10)
    """How often a request that timed out, failed to connect or got a 429/5xx status is tried again."""
    backoff_s: float = Field(1.0, ge=0, le=600)
    """Wait before the first retry, in seconds; it doubles with each further retry (a larger
    ``Retry-After`` from the server wins, up to 10 minutes)."""
    max_redirects: int = Field(5, ge=0, le=30)
    """Redirects followed per URL; a longer chain is quarantined as ``too_many_redirects``."""
    user_agent: str = Field(DEFAULT_USER_AGENT, min_length=1, pattern=r"^[^\x00-\x1f]+$")
    """The User-Agent header sent with every request; its first word is the name matched in robots.txt."""
    respect_robots: bool = True
    """Obey each host's robots.txt (disallowed URLs are quarantined as ``robots``, and ``Crawl-delay`` is
    honoured). Turn off only for sites you own."""
    use_sitemaps: bool = True
    """Read each host's sitemaps (those robots.txt names, else ``/sitemap.xml``) to find unlinked pages."""
    @field_validator("seeds")
    @classmethod
    def _absolute_http_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            parts = urlsplit(url.strip())
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"seed '{url}' is not an absolute http(s) URL; write it as https://host/path")
        return [u.strip() for u in v]

    @model_validator(mode="after")
    def _allow_list_needs_entries(self) -> CrawlSource:
        if self.scope == "allow_list" and not self.allow:
            raise ValueError("scope 'allow_list' needs at least one 'allow' entry (a URL prefix or host name)")
        return self
