"""Real text for the curation tests: Wikipedia articles (the gensim test dump) and Shakespeare's plays.

The dump is raw wikitext; a few regular expressions turn it into plain prose paragraphs (templates,
references, tables, lists and headings go; link text stays), which is what a web-text filter should see
as ordinary, good text.
"""

from __future__ import annotations

import bz2
import html
import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"test data package {name} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


WIKI = package_dir("gensim") / "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
PLAYS = package_dir("shksprdata") / "texts"

_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}|\{\|[^{}]*?\|\}")
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>|<!--.*?-->", re.DOTALL)
_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]")
_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]")
_EXTERNAL = re.compile(r"\[https?://\S+ ?([^\]]*)\]")
_TAG = re.compile(r"<[^>]+>")


def plain_paragraphs(wikitext: str) -> list[str]:
    """Prose paragraphs of one article: one per line of wikitext that is running text."""
    text = _REF.sub("", wikitext)
    while True:
        stripped = _TEMPLATE.sub("", text)
        if stripped == text:
            break
        text = stripped
    text = _FILE_LINK.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXTERNAL.sub(r"\1", text)
    text = html.unescape(_TAG.sub("", text)).replace("'''", "").replace("''", "")
    out = []
    for line in text.split("\n"):
        line = " ".join(line.split())
        if line and line[0].isalpha() and line[-1] in ".!?\"" and len(line.split()) >= 8 and "{" not in line \
                and "|" not in line and "}" not in line:
            out.append(line)
    return out


def load_wiki_articles() -> list[str]:
    """Articles of the dump as plain prose (paragraphs separated by blank lines), those with 3+ paragraphs."""
    ns = "{http://www.mediawiki.org/xml/export-0.10/}"
    articles = []
    with bz2.open(WIKI) as f:
        for _, el in ET.iterparse(f):
            if el.tag.endswith("}page"):
                node = el.find(f"{ns}revision/{ns}text")
                paragraphs = plain_paragraphs(node.text or "") if node is not None else []
                if len(paragraphs) >= 3:
                    articles.append("\n\n".join(paragraphs))
                el.clear()
    return articles


def paragraphs_of(articles: list[str]) -> list[str]:
    """Prose paragraphs of 60+ words, each once."""
    seen: dict[str, None] = {}
    for article in articles:
        for p in article.split("\n\n"):
            if len(p.split()) >= 60:
                seen.setdefault(p)
    return list(seen)


def play(name: str) -> str:
    """A play's text without the Project Gutenberg header and footer."""
    text = (PLAYS / name).read_text(encoding="utf-8")
    start = re.search(r"^\*{3} ?START OF.*$", text, re.MULTILINE)
    end = re.search(r"^\*{3} ?END OF.*$", text, re.MULTILINE)
    return text[start.end() if start else 0 : end.start() if end else len(text)].strip()


def load_speeches() -> list[str]:
    """Blocks of Shakespeare (a speech, or a run of short ones) of 60+ words, from the modern editions."""
    out: dict[str, None] = {}
    for path in sorted(PLAYS.glob("*_gut.txt")):
        block: list[str] = []
        for para in re.split(r"\n\s*\n", play(path.name)):
            block.append(para.strip())
            if len(" ".join(block).split()) >= 60:
                out.setdefault("\n\n".join(block))
                block = []
    return list(out)


@pytest.fixture(scope="session")
def wiki_articles() -> list[str]:
    return load_wiki_articles()


@pytest.fixture(scope="session")
def wiki_paragraphs(wiki_articles: list[str]) -> list[str]:
    return paragraphs_of(wiki_articles)


@pytest.fixture(scope="session")
def speeches() -> list[str]:
    return load_speeches()
