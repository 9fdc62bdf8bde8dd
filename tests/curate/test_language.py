"""Language identification on real English (Wikipedia, Shakespeare) and on French and German paragraphs."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from gristmill.curate.language import LanguageFilter, LanguageStep
from gristmill.data.step import StepStats, counted
from gristmill.errors import ConfigError, MissingExtra
from gristmill.formats.document import Document, Provenance

pytest.importorskip("py3langid", reason="the curate extra is not installed (pip install -e '.[curate]')")

FRENCH = ("Le village se trouve au bord de la rivière, entre les collines couvertes de vignes. Chaque année, "
          "au mois de septembre, les habitants se réunissent sur la place pour fêter la fin des vendanges, et "
          "les enfants courent entre les tables pendant que les anciens racontent les histoires d'autrefois.")
GERMAN = ("Die Stadt liegt am Ufer eines großen Sees, umgeben von Wäldern und kleinen Dörfern. Im Sommer kommen "
          "viele Besucher, die mit dem Schiff über das Wasser fahren oder in den Bergen wandern, und am Abend "
          "sitzen sie in den Gasthäusern am Hafen und essen frischen Fisch aus dem See.")


def doc(text: str, i: int = 0) -> Document:
    return Document(id=f"d{i}", text=text, source="test", provenance=Provenance(uri="test", reader="test"))


@pytest.fixture(scope="module")
def english_only() -> LanguageFilter:
    return LanguageFilter()


def test_real_english_is_kept_with_its_language_stored(english_only: LanguageFilter, wiki_articles: list[str],
                                                       speeches: list[str]) -> None:
    texts = wiki_articles + speeches[:500]
    stats = StepStats(name="language")
    kept = list(counted(english_only, [doc(t, i) for i, t in enumerate(texts)], stats))
    assert stats.kept >= 0.99 * len(texts), stats.dropped
    assert all(d.meta["language"] == "en" and d.meta["language_score"] >= 0.65 for d in kept)


def test_other_languages_are_dropped_with_the_detected_language(english_only: LanguageFilter) -> None:
    dropped: list[tuple[str, Document]] = []
    stats = StepStats(name="language", quarantine=lambda d, step, reason: dropped.append((reason, d)))
    kept = list(english_only.run([doc(FRENCH, 0), doc(GERMAN, 1)], stats))
    assert kept == [] and stats.dropped == {"language": 2}
    assert [(r, d.meta["language"]) for r, d in dropped] == [("language", "fr"), ("language", "de")]
    assert all(d.meta["language_score"] > 0.9 for _, d in dropped)
    both = LanguageFilter(LanguageStep(languages=["fr", "de"]))
    assert both.reject(doc(FRENCH)) is None and both.reject(doc(GERMAN)) is None
    assert english_only.summary()["fr"] == 1


def test_a_low_score_in_a_wanted_language_is_its_own_reason(english_only: LanguageFilter) -> None:
    # Half English, half French: English may win, but not with the certainty min_score asks for.
    mixed = "The village lies on the river. " + FRENCH[:120]
    strict = LanguageFilter(LanguageStep(languages=["en", "fr"], min_score=0.999999), model=english_only.model)
    d = doc(mixed)
    assert strict.reject(d) == "language_score" and d.meta["language"] in ("en", "fr")


def test_config_is_checked() -> None:
    with pytest.raises(ValidationError, match="ISO 639"):
        LanguageStep(languages=["English"])
    with pytest.raises(ConfigError, match="knows no language"):
        LanguageFilter(LanguageStep(languages=["zz"]))


def test_a_missing_extra_names_the_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "py3langid", None)  # as on an install without the curate extra
    with pytest.raises(MissingExtra, match="curate"):
        LanguageFilter()
