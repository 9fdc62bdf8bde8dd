"""FineWeb's line rules on real Wikipedia prose and on crafted list-like and boilerplate pages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gristmill.curate.quality.fineweb import FineWebFilter, FineWebStep
from gristmill.data.step import StepStats, counted
from gristmill.formats.document import Document, Provenance


def doc(text: str, i: int = 0) -> Document:
    return Document(id=f"d{i}", text=text, source="test", provenance=Provenance(uri="test", reader="test"))


def reason(text: str, cfg: FineWebStep | None = None) -> str | None:
    return FineWebFilter(cfg).reject(doc(text))


@pytest.fixture(scope="module")
def prose(wiki_paragraphs: list[str]) -> list[str]:
    return wiki_paragraphs[40:48]


def test_wikipedia_articles_and_paragraphs_pass(wiki_articles: list[str], wiki_paragraphs: list[str]) -> None:
    texts = wiki_articles + wiki_paragraphs
    stats = StepStats(name="fineweb_quality")
    kept = list(counted(FineWebFilter(), [doc(t, i) for i, t in enumerate(texts)], stats))
    assert len(kept) == len(texts) and stats.dropped == {}


def test_each_rule_drops_its_kind_of_page(prose: list[str]) -> None:
    assert reason("\n".join(prose)) is None
    words = " ".join(prose).split()
    # Headlines and menus: long lines, none ending in punctuation.
    headlines = [" ".join(words[i : i + 9]).rstrip(".,;:!?\"'") for i in range(0, 360, 9)]
    assert reason("\n".join(headlines)) == "line_punct_ratio"
    # A list of short entries, most 30 characters or fewer.
    entries = [" ".join(words[i : i + 3]) + "." for i in range(0, 300, 3)]
    assert reason("\n".join(entries)) == "short_line_ratio"
    # Boilerplate repeated under every other sentence.
    sentences = " ".join(prose).replace(". ", ".\n").split("\n")
    footer = "Share this story with your friends and family today."
    with_footer = [s + ("\n" + footer if i % 2 else "") for i, s in enumerate(sentences)]
    assert reason("\n".join(with_footer)) == "dup_line_chars"
    # Text broken by runs of blank lines: more line breaks than 0.3 per word.
    assert reason(("\n" * 12).join(sentences)) == "newline_ratio"


def test_thresholds_and_signals(prose: list[str]) -> None:
    text = "\n".join(prose + ["See also.", "Notes.", "References."])
    assert reason(text) is None
    assert reason(text, FineWebStep(max_short_line_ratio=0.2)) == "short_line_ratio"
    step = FineWebFilter(FineWebStep(store_signals=True))
    d = doc(text)
    assert step.reject(d) is None
    signals = d.meta["quality"]
    assert signals["fineweb_short_line_ratio"] == pytest.approx(3 / 11)
    assert signals["fineweb_line_punct_ratio"] == 1.0 and signals["fineweb_dup_line_chars"] == 0.0
    assert FineWebFilter(FineWebStep(max_short_line_ratio=0.2)).judge(signals) == "short_line_ratio"
    with pytest.raises(ValidationError):
        FineWebStep(min_line_punct_ratio=2.0)
