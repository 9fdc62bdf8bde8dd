"""C4's line clean-up and page rules on real Wikipedia prose and on a crafted web page."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from gristmill.curate.quality.c4 import C4Filter, C4Step
from gristmill.data.step import StepStats, counted
from gristmill.formats.document import Document, Provenance


def doc(text: str, i: int = 0) -> Document:
    return Document(id=f"d{i}", text=text, source="test", provenance=Provenance(uri="test", reader="test"))


def run(step: C4Filter, texts: list[str]) -> tuple[list[Document], StepStats]:
    stats = StepStats(name=step.name)
    kept = list(counted(step, [doc(t, i) for i, t in enumerate(texts)], stats))
    assert stats.seen == stats.kept + sum(stats.dropped.values()) == len(texts)
    return kept, stats


@pytest.fixture(scope="module")
def prose(wiki_paragraphs: list[str]) -> list[str]:
    """Six paragraphs of Wikipedia prose, each a line."""
    return wiki_paragraphs[20:26]


def test_wikipedia_articles_are_kept_whole(wiki_articles: list[str]) -> None:
    kept, stats = run(C4Filter(), wiki_articles)
    assert stats.kept == len(wiki_articles) and stats.dropped == {}
    # The articles are prose lines already: C4 only takes out the blank lines between paragraphs (and,
    # unless told not to, citation marks such as "[]" in quoted law).
    kept, stats = run(C4Filter(C4Step(remove_citations=False)), wiki_articles)
    for before, after in zip(wiki_articles, kept, strict=True):
        assert after.text == "\n".join(p for p in before.split("\n") if p.strip())


def test_web_page_boilerplate_lines_are_removed(prose: list[str]) -> None:
    page = "\n".join([
        "Home | About | Contact",
        "Menu",
        prose[0],
        "Please enable JavaScript in your browser to see this page.",
        prose[1] + "[1]",
        "This website uses cookies to give you the best experience.",
        "Read our Privacy Policy and Terms of Use before continuing.",
        prose[2],
        "Posted by admin on March 3, 2021",
        prose[3],
        "Share this article on social media",
    ])
    step = C4Filter()
    kept, stats = run(step, [page])
    assert [d.text for d in kept] == ["\n".join([prose[0], prose[1], prose[2], prose[3]])]
    assert stats.changed == 1
    assert step.summary() == {"javascript": 1, "no_terminal_punct": 3, "policy": 2, "too_few_words": 1}


def test_verse_keeps_only_lines_that_end_a_sentence(speeches: list[str]) -> None:
    verse = "\n".join(speeches[1000:1010])
    cleaned = C4Filter().apply(verse)
    assert cleaned and all(line.endswith((".", "!", "?", "'", '"')) for line in cleaned.split("\n"))
    assert len(cleaned) < len(verse)


def test_pages_are_dropped_with_their_reason_and_left_as_they_came(prose: list[str]) -> None:
    lorem = "\n".join(prose[:4] + ["Lorem ipsum dolor sit amet, consectetur adipiscing elit."])
    code = "\n".join(prose[:4] + ["The function is defined as int main() { return 0; } in the listing."])
    short = "The cat sat on the mat. It was warm. Then it left."
    step = C4Filter()
    kept, stats = run(step, [lorem, code, short, "\n".join(prose)])
    assert stats.dropped == {"lorem_ipsum": 1, "curly_bracket": 1, "too_few_sentences": 1}
    assert len(kept) == 1 and kept[0].id == "d3"
    dropped = []
    stats = StepStats(name="c4", quarantine=lambda d, step, reason: dropped.append((d.text, reason)))
    list(step.run([doc(lorem)], stats))
    assert dropped == [(lorem, "lorem_ipsum")]  # the quarantine sees the text as it came


def test_options_and_signals(prose: list[str]) -> None:
    text = "\n".join(prose[:2])
    assert C4Filter(C4Step(min_sentences=0, min_lines=3)).reject(doc(text)) == "too_few_lines"
    assert C4Filter(C4Step(min_sentences=0, min_lines=2)).reject(doc(text)) is None
    bracket = doc("\n".join(prose) + "\nUse {braces} freely.")
    assert C4Filter(C4Step(curly_bracket=False)).reject(bracket) is None
    step = C4Filter(C4Step(store_signals=True))
    kept, _ = run(step, ["\n".join(prose) + "\nMenu"])
    signals = kept[0].meta["quality"]
    assert signals["c4_lines"] == len(prose) and signals["c4_lines_removed"] == 1
    assert signals["c4_sentences"] >= 5 and signals["c4_lorem_ipsum"] == 0
    assert C4Filter(C4Step(min_sentences=1000)).judge(signals) == "too_few_sentences"
    with pytest.raises(ValidationError):
        C4Step(min_words_per_line=-1)


def test_the_line_clean_up_equals_line_reason_applied_to_every_line(wiki_articles: list[str],
                                                                     speeches: list[str]) -> None:
    """``clean`` decides the common cases inline; it must agree with ``line_reason`` line by line."""
    page = ("Home\nPlease enable JavaScript to read this page, thank you.\nWe use cookies. See our privacy policy.\n"
            "A line [1] with a citation [edit] that ends well.\n" + "x" * 1200 + " and two more words.\n\n  \n"
            "Too short.\nThree words here\n")
    texts = [*wiki_articles, "\n".join(speeches[:2000]), page]
    for cfg in (C4Step(), C4Step(min_words_per_line=1), C4Step(min_words_per_line=0, terminal_punct=False,
                                                               max_word_length=6, javascript_lines=False)):
        flt = C4Filter(cfg)
        for text in texts:
            kept, removed = [], {}
            for raw in text.split("\n"):
                line = raw.strip()
                if cfg.remove_citations:
                    line = re.sub(r"\[\d*\]|\[edit\]|\[citation needed\]", "", line, flags=re.IGNORECASE).strip()
                if not raw.strip():
                    continue
                reason = flt.line_reason(line)
                if reason is None:
                    kept.append(line)
                else:
                    removed[reason] = removed.get(reason, 0) + 1
            assert flt.clean(text) == ("\n".join(kept), removed)
