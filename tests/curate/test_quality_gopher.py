"""Gopher's quality and repetition rules on real prose (Wikipedia, Shakespeare) and on crafted bad text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gristmill.curate.quality.gopher import (
    GopherQualityFilter,
    GopherQualityStep,
    GopherRepetitionFilter,
    GopherRepetitionStep,
)
from gristmill.curate.text import TextViews
from gristmill.data.step import StepStats, counted
from gristmill.formats.document import Document, Provenance


def doc(text: str, i: int = 0) -> Document:
    return Document(id=f"d{i}", text=text, source="test", provenance=Provenance(uri="test", reader="test"))


def run(step, texts: list[str]) -> tuple[list[Document], StepStats]:
    stats = StepStats(name=step.name)
    kept = list(counted(step, [doc(t, i) for i, t in enumerate(texts)], stats))
    assert stats.seen == stats.kept + sum(stats.dropped.values()) == len(texts)
    return kept, stats


def test_wikipedia_articles_and_shakespeare_pass(wiki_articles: list[str], speeches: list[str]) -> None:
    scenes = ["\n\n".join(speeches[i : i + 20]) for i in range(0, 2000, 20)]  # 100 runs of 20 speeches
    for step in (GopherQualityFilter(), GopherRepetitionFilter()):
        kept, stats = run(step, wiki_articles)
        assert stats.kept == len(wiki_articles), (step.name, stats.dropped)
        kept, stats = run(step, scenes)
        assert stats.kept >= 0.95 * len(scenes), (step.name, stats.dropped)


@pytest.fixture(scope="module")
def prose(wiki_paragraphs: list[str]) -> str:
    """About 650 words of ordinary Wikipedia prose, a line per paragraph."""
    return "\n\n".join(wiki_paragraphs[10:14])


def quality_reason(text: str) -> str | None:
    return GopherQualityFilter().reject(doc(text))


def test_quality_drops_each_kind_of_bad_text_with_its_reason(prose: str) -> None:
    assert quality_reason(prose) is None
    words = prose.split()
    assert quality_reason(" ".join(words[:40])) == "word_count"
    assert quality_reason(" ".join(["a", "of", "the", "b", "c"] * 20)) == "mean_word_length"
    assert quality_reason(" ".join(["incomprehensibilities", "characteristically", "the", "of"] * 30)) == "mean_word_length"
    assert quality_reason(prose + " #tag" * (len(words) // 5)) == "hash_ratio"
    assert quality_reason(" ".join(w + "..." if i % 5 == 4 else w for i, w in enumerate(words))) == "ellipsis_ratio"
    bullets = "\n".join(f"- {' '.join(words[i : i + 8])}" for i in range(0, len(words) - 8, 8))
    assert quality_reason(bullets) == "bullet_lines"
    trailing = "\n".join(f"{' '.join(words[i : i + 15])}..." for i in range(0, len(words) - 15, 15))
    assert quality_reason(trailing) == "ellipsis_lines"
    numbers = " ".join(f"{i * 37 % 1000}.{i % 7}" for i in range(200))
    assert quality_reason(prose + "\n" + numbers + " " + numbers) == "alpha_words"
    no_stop_words = " ".join(w for w in words if w.lower().strip(".,;:") not in
                             {"the", "be", "to", "of", "and", "that", "have", "with"})
    assert quality_reason(no_stop_words) == "stop_words"


def repetition_reason(text: str) -> str | None:
    return GopherRepetitionFilter().reject(doc(text))


def test_repetition_drops_each_kind_of_repeat_with_its_reason(prose: str, speeches: list[str]) -> None:
    assert repetition_reason(prose) is None
    verse = speeches[200]
    lines = [line for line in verse.split("\n") if line.strip()]
    assert repetition_reason("\n".join(lines + lines[: len(lines) // 2 + 1])) == "dup_line_fraction"
    # Lines repeated that are few but long: by count under 30%, by characters over 20%.
    long_lines = prose.split("\n\n")
    short = [f"Line {i} of the list." for i in range(20)]
    assert repetition_reason("\n".join(short + long_lines + long_lines[:2])) == "dup_line_chars"
    # A one-line paragraph repeated between multi-line ones: lines mostly unique, paragraphs not.
    blocks = ["\n".join(line for line in speeches[i].split("\n") if line.strip()) for i in range(300, 304)]
    refrain = "With a hey, and a ho, and a hey nonino."
    assert repetition_reason("\n\n".join(b + "\n\n" + refrain for b in blocks)) == "dup_para_fraction"
    words = prose.split()
    assert repetition_reason(" ".join(w + " New York" for w in words)) == "top_2gram_chars"
    passage = " ".join(words[:100])
    assert repetition_reason(prose + " " + passage + " " + passage) == "dup_5gram_chars"


def test_signals_are_stored_and_can_be_judged_again(prose: str) -> None:
    cfg = GopherQualityStep(store_signals=True)
    step = GopherQualityFilter(cfg)
    short = doc(" ".join(prose.split()[:40]))
    kept, stats = run(step, [prose])
    assert stats.dropped == {} and len(kept) == 1
    signals = kept[0].meta["quality"]
    assert set(signals) == set(step.limits) and signals["gopher_word_count"] == len(prose.split())
    assert step.reject(short) == "word_count" and short.meta["quality"]["gopher_stop_words"] >= 2
    # New thresholds applied to stored signals, no text needed.
    strict = GopherQualityFilter(GopherQualityStep(min_words=10_000))
    assert strict.judge(signals) == "word_count" and step.judge(signals) is None
    rep = GopherRepetitionFilter(GopherRepetitionStep(store_signals=True))
    kept, _ = run(rep, [prose])
    assert {"gopher_dup_line_fraction", "gopher_top_2gram_chars", "gopher_dup_10gram_chars"} <= set(
        kept[0].meta["quality"])
    # Signals are stored by default; store_signals: false stores nothing.
    plain = doc(prose)
    GopherQualityFilter(GopherQualityStep(store_signals=False)).reject(plain)
    assert plain.meta == {}
    stored = doc(prose)
    GopherQualityFilter().reject(stored)
    assert stored.meta["quality"] == signals


def test_filters_share_one_split_per_text(prose: str) -> None:
    views = TextViews()
    d = doc(prose)
    GopherQualityFilter(views=views).reject(d)
    view = views.of(d.text)
    GopherRepetitionFilter(views=views).reject(d)
    assert views.of(d.text) is view and "words" in vars(view) and "paragraphs" in vars(view)


def test_config_bounds_are_checked() -> None:
    with pytest.raises(ValidationError):
        GopherQualityStep(min_words=500, max_words=100)
    with pytest.raises(ValidationError):
        GopherRepetitionStep(max_dup_line_fraction=1.5)
    with pytest.raises(ValidationError):
        GopherQualityStep(tyop=1)
    assert GopherRepetitionStep.model_validate({"type": "gopher_repetition",
                                                "max_top_ngram_chars": {"2": 0.3}}).max_top_ngram_chars == {2: 0.3}


def test_batched_ngram_measures_equal_the_per_document_ones(wiki_articles: list[str], speeches: list[str],
                                                            prose: str) -> None:
    from gristmill.curate.quality.gopher import WordNGrams, batch_ngram_signals

    words = prose.split()
    texts = wiki_articles + speeches[:600] + [
        "", "one", "a b a b a b", prose + " " + " ".join(words[:100]) * 2, " ".join(w + " New York" for w in words)]
    word_lists = [t.split() for t in texts]
    for tops, dups in (([2, 3, 4], [5, 6, 7, 8, 9, 10]), ([1, 3], [2, 7])):
        got = [v for i in range(0, len(word_lists), 97) for v in batch_ngram_signals(word_lists[i : i + 97], tops, dups)]
        for w, values in zip(word_lists, got, strict=True):
            grams = WordNGrams(w)
            assert values == {**{f"top_{n}": grams.top_chars(n) for n in tops},
                              **{f"dup_{n}": grams.dup_chars(n) for n in dups}}
    # The filter measures in batches; a document judged alone gets the same signals.
    step = GopherRepetitionFilter()
    kept, _ = run(step, texts[:300])
    for d in kept:
        alone = doc(d.text)
        GopherRepetitionFilter().reject(alone)
        assert alone.meta["quality"] == d.meta["quality"]


def plain_quality_signals(text: str) -> dict[str, float]:
    """The word-based quality signals as the rules state them: every word stripped of its punctuation,
    letterless words found in the whole text, every stripped word lowercased. The filter reaches the
    same numbers while stripping only the words that are not all letters."""
    import re

    from gristmill.curate.quality.gopher import STOP_WORDS
    from gristmill.curate.text import _WORD_EDGE_PUNCT

    words = text.split()
    bare = [w for w in (w.strip(_WORD_EDGE_PUNCT) for w in words) if w]
    letterless = re.findall(r"(?<!\S)(?:[\d_]|[^\w\s])+(?!\S)", text)
    return {"gopher_mean_word_length": sum(map(len, bare)) / len(bare) if bare else 0.0,
            "gopher_alpha_words": (len(words) - len(letterless)) / len(words) if words else 0.0,
            "gopher_stop_words": len(set(STOP_WORDS) & {w.lower() for w in bare})}


def test_word_signals_equal_the_plain_statement_of_the_rules(wiki_articles: list[str], speeches: list[str]) -> None:
    odd = ["The THE tHe wİth With. ..., 123 _ab_ ½ ² #### … — 'to' (OF) and", "", "   ", "...", "K\u212aTHE",
           "the\u0301 ...the... be; 'have' «with» “that” 1990s 12:30 -- ---- ok!", "İt is ĳ ﬁne.\u00a0of"]
    flt = GopherQualityFilter()
    for text in wiki_articles + speeches[:3000] + odd:
        signals = dict(flt.measure(TextViews().of(text)))
        assert {k: signals[k] for k in plain_quality_signals(text)} == plain_quality_signals(text), text[:80]
