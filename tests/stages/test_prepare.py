"""prepare on real collected data (a slice of the Wikipedia dump, Shakespeare) and step by step."""

from pathlib import Path

import pytest

from gristmill.core.config import validate
from gristmill.core.workspace import StageContext, write_manifest
from gristmill.curate.build import build_steps
from gristmill.curate.config import PrepareConfig
from gristmill.curate.dedup.exact import ExactDedup
from gristmill.curate.normalize import CleanWhitespace, NormalizeUnicode, StripGutenberg
from gristmill.curate.quality.length import LengthFilter
from gristmill.curate.split import split_of
from gristmill.data.config import CollectConfig
from gristmill.data.step import StepStats
from gristmill.errors import ConfigError, InputError
from gristmill.formats.document import Document, Provenance, read_documents, read_quarantine
from gristmill.stages.collect import run as run_collect
from gristmill.stages.prepare import run as run_prepare

WIKI = "pkg://gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
PLAYS = "pkg://shksprdata/texts/*_gut*.txt"  # every play and poem, both editions; not metadata.txt


def prepare_config(val_fraction: float = 0.1, **length) -> PrepareConfig:
    """The default steps with the length step's keys changed."""
    steps = [s.model_dump() for s in PrepareConfig().steps]
    for s in steps:
        if s["type"] == "length":
            s.update(length)
    return PrepareConfig.model_validate({"steps": steps, "val_fraction": val_fraction})


def collected(run_dir: Path, *sources: dict) -> StageContext:
    """Run collect into ``run_dir`` (with a manifest, as the runner leaves it) and return prepare's context."""
    ctx = StageContext(run_dir=run_dir, stage="collect", seed=1)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    stats = run_collect(ctx, CollectConfig(sources=list(sources)))
    write_manifest(ctx.out_dir, stage="collect", recipe="test", fingerprint="", config={}, inputs={},
                   stats=stats, started=0.0)
    prep = StageContext(run_dir=run_dir, stage="prepare", seed=1)
    prep.out_dir.mkdir(parents=True, exist_ok=True)
    return prep


def outputs(ctx: StageContext) -> tuple[list[Document], list[Document], list[dict]]:
    train = list(read_documents(ctx.out_dir, "train"))
    val = list(read_documents(ctx.out_dir, "val"))
    dropped = list(read_quarantine(ctx.out_dir, "dropped"))
    return train, val, dropped


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """25 wiki articles and every play, with the plays collected twice under two names (exact duplicates),
    prepared with a length cap that the longest texts exceed."""
    ctx = collected(tmp_path_factory.mktemp("real"),
                    {"name": "wiki", "type": "mediawiki", "path": WIKI, "limit": 25},
                    {"name": "plays", "path": PLAYS},
                    {"name": "plays_again", "path": PLAYS})
    stats = run_prepare(ctx, prepare_config(max_chars=150_000, val_fraction=0.2))
    return ctx, stats


def test_every_document_ends_up_in_train_val_or_dropped(real):
    ctx, stats = real
    train, val, dropped = outputs(ctx)
    collected_ids = [d.id for d in read_documents(ctx.input_dir("collect"))]
    assert stats["documents_in"] == len(collected_ids) == 25 + 2 * 77
    assert len(train) + len(val) + len(dropped) == len(collected_ids)
    assert sorted([d.id for d in train + val] + [r["document"]["id"] for r in dropped]) == sorted(collected_ids)
    assert stats["splits"]["train"]["documents"] == len(train) and stats["splits"]["val"]["documents"] == len(val)
    assert stats["splits"]["val"]["characters"] == sum(len(d.text) for d in val)
    for name, st in stats["steps"].items():
        assert st["seen"] == st["kept"] + sum(st["dropped"].values()), name
    # Every second copy of a play is a duplicate, unless the length cap dropped it first.
    too_long_again = [r for r in dropped if r["reason"] == "too_long" and r["document"]["source"] == "plays_again"]
    assert too_long_again
    assert stats["steps"]["dedup"]["dropped"]["duplicate"] == 77 - len(too_long_again)
    assert stats["dropped"] == len(dropped)


def test_duplicates_are_dropped_keeping_the_first(real):
    ctx, _ = real
    train, val, dropped = outputs(ctx)
    kept = {d.id: d for d in train + val}
    dups = [r for r in dropped if r["reason"] == "duplicate"]
    assert dups and all(r["step"] == "dedup" for r in dups)
    for r in dups:
        assert r["document"]["source"] == "plays_again"  # the copy read second goes
        first = kept[r["document"]["meta"]["duplicate_of"]]
        assert first.source == "plays" and first.text == r["document"]["text"]
    assert len({d.text for d in kept.values()}) == len(kept)


def test_outputs_are_clean_documents_tagged_with_their_split(real):
    ctx, stats = real
    train, val, dropped = outputs(ctx)
    assert train and val
    for split, docs in (("train", train), ("val", val)):
        for d in docs:
            assert d.meta["split"] == split == split_of(d.id, 0.2)
            assert 200 <= len(d.text) <= 150_000 and d.text == d.text.strip() and "\r" not in d.text
            assert "\n\n\n" not in d.text and not any(line.endswith(" ") for line in d.text.split("\n"))
    too_long = next(r for r in dropped if r["reason"] == "too_long")
    assert too_long["step"] == "length" and len(too_long["document"]["text"]) > 150_000
    # The packaged plays carry no Project Gutenberg boilerplate: the step leaves them untouched.
    assert stats["steps"]["strip_gutenberg"]["changed"] == 0


def test_split_is_decided_by_the_document_alone(real, tmp_path):
    ctx, _ = real
    train, val, _ = outputs(ctx)
    first = {d.id: d.meta["split"] for d in train + val}
    # Prepare a different corpus that shares some documents: shared ones keep their split.
    small = collected(tmp_path, {"name": "wiki", "type": "mediawiki", "path": WIKI, "limit": 8},
                      {"name": "plays", "path": "pkg://shksprdata/texts/[a-h]*_gut*.txt"})
    run_prepare(small, prepare_config(max_chars=150_000, val_fraction=0.2))
    again_train, again_val, _ = outputs(small)
    again = {d.id: d.meta["split"] for d in again_train + again_val}
    assert len(again) > 20 and all(first[i] == s for i, s in again.items())
    # A fair share, and a larger fraction only moves documents from train to val.
    ids = [f"doc-{i}" for i in range(2000)]
    assert 0.17 < sum(split_of(i, 0.2) == "val" for i in ids) / len(ids) < 0.23
    assert all(split_of(i, 0.3) == "val" for i in ids if split_of(i, 0.2) == "val")


def run_steps(steps, texts: list[str]) -> tuple[list[str], list[StepStats]]:
    docs = [Document(id=f"d{i}", text=t, source="s", provenance=Provenance(uri="u", reader="r"))
            for i, t in enumerate(texts)]
    all_stats = []
    for step in steps:
        st = StepStats(name=step.name)
        docs = list(step.run(docs, st))
        all_stats.append(st)
    return [d.text for d in docs], all_stats


def test_whitespace_cleaning():
    raw = "  Title\r\n\r\nLine one \t\rline\x00 two\x0cthree\x85four\u2028five\n\n\n\n   indented\tverse  \n\n"
    (out,), (st,) = run_steps([CleanWhitespace()], [raw])
    assert out == "Title\n\nLine one\nline two\nthree\nfour\nfive\n\n   indented\tverse"
    assert st.changed == 1
    _, (st,) = run_steps([CleanWhitespace()], [out])
    assert st.changed == 0


def test_unicode_normalisation_forms():
    decomposed = "cafe\u0301 \ufb01ne m\u00b2"
    assert run_steps([NormalizeUnicode("NFC")], [decomposed])[0] == ["caf\u00e9 \ufb01ne m\u00b2"]
    assert run_steps([NormalizeUnicode("NFKC")], [decomposed])[0] == ["caf\u00e9 fine m2"]


def test_gutenberg_header_and_footer_are_stripped():
    book = ("The Project Gutenberg EBook of Hamlet\n\nThis eBook is for the use of anyone anywhere.\n\n"
            "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n\nHAMLET\n\nWho's there?\n\n"
            "End of the Project Gutenberg EBook of Hamlet\n\n*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n"
            "Updated editions will replace the previous one.\n")
    old = "Legal small print.\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\nKING LEAR\n" \
          "Text.\nEnd of this Etext of King Lear\n"
    plain = "HAMLET\n\nThe end of the play.\n"
    texts, (st, _) = run_steps([StripGutenberg(), CleanWhitespace()], [book, old, plain])
    assert texts == ["HAMLET\n\nWho's there?", "KING LEAR\nText.", "HAMLET\n\nThe end of the play."]
    assert st.changed == 2


def test_length_filter_and_dedup_say_why():
    texts, (length, dedup) = run_steps(
        [LengthFilter(min_chars=10, max_chars=40, min_words=3), ExactDedup()],
        ["short", "two longwordsonly", "x" * 41, "one two three four", "one two three four", "five six seven"])
    assert texts == ["one two three four", "five six seven"]
    assert dict(length.dropped) == {"too_short": 1, "too_few_words": 1, "too_long": 1}
    assert dict(dedup.dropped) == {"duplicate": 1}


def test_step_list_follows_the_config():
    names = [s.name for s in build_steps(PrepareConfig())]
    assert names == ["strip_gutenberg", "normalize_unicode", "clean_whitespace", "length", "dedup", "split"]
    assert [s.name for s in build_steps(PrepareConfig(steps=[]))] == ["split"]
    custom = validate(PrepareConfig, {"steps": [{"type": "length", "min_chars": 5}, {"type": "clean_whitespace"}]},
                      "recipe x")
    assert [s.name for s in build_steps(custom)] == ["length", "clean_whitespace", "split"]
    with pytest.raises(ConfigError, match=r"steps\.0\.max_chars|max_chars \(50\) is below"):
        validate(PrepareConfig, {"steps": [{"type": "length", "min_chars": 100, "max_chars": 50}]}, "recipe x")
    with pytest.raises(ConfigError, match="unknown or missing type"):
        validate(PrepareConfig, {"steps": [{"type": "lenght"}]}, "recipe x")
    with pytest.raises(ConfigError, match="listed twice"):
        validate(PrepareConfig, {"steps": [{"type": "dedup"}, {"type": "dedup"}]}, "recipe x")
    with pytest.raises(ConfigError, match="val_fraction"):
        validate(PrepareConfig, {"val_fraction": 1.5}, "recipe x")


def test_an_empty_split_and_a_missing_collect_are_errors(tmp_path):
    with pytest.raises(InputError, match="run `gristmill collect`"):
        run_prepare(StageContext(run_dir=tmp_path / "none", stage="prepare", seed=1), PrepareConfig())
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "one.txt").write_text("A single document with enough words to pass the filters here.", "utf-8")
    ctx = collected(tmp_path / "run", {"name": "one", "path": str(folder)})
    with pytest.raises(InputError, match=r"the (val|train) split is empty .*prepare.val_fraction"):
        run_prepare(ctx, prepare_config(min_chars=0, min_words=0, val_fraction=0.5))
    assert not list(ctx.out_dir.rglob("*.parquet"))  # a failed stage leaves no half-written outputs
