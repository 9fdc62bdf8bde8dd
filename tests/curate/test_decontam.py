"""Decontamination on real paragraphs: planted copies of validation and held-out passages in training text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from gristmill.curate.decontam import Decontaminate, DecontaminateStep, NGramIndex, held_out_texts, words
from gristmill.curate.split import split_of
from gristmill.data.step import StepStats, counted
from gristmill.formats.document import Document, Provenance

VAL_FRACTION = 0.3


def doc(text: str, i: str) -> Document:
    return Document(id=i, text=text, source="test", provenance=Provenance(uri="test", reader="test"))


def ids(split: str, n: int) -> list[str]:
    """``n`` document ids that the split puts in ``split`` at VAL_FRACTION."""
    out, i = [], 0
    while len(out) < n:
        if split_of(f"doc{i}", VAL_FRACTION) == split:
            out.append(f"doc{i}")
        i += 1
    return out


def run(step: Decontaminate, docs: list[Document]) -> tuple[list[Document], list[tuple[str, Document]], StepStats]:
    dropped: list[tuple[str, Document]] = []
    stats = StepStats(name=step.name, quarantine=lambda d, _s, reason: dropped.append((reason, d)))
    kept = list(counted(step, docs, stats))
    assert stats.seen == len(docs) == stats.kept + len(dropped)
    return kept, dropped, stats


def test_a_training_document_quoting_a_validation_passage_is_dropped(wiki_paragraphs: list[str],
                                                                   speeches: list[str]) -> None:
    val_ids, train_ids = ids("val", 40), ids("train", 203)
    planted_id, id_13, id_12 = train_ids[200:]
    val = [doc(p, i) for p, i in zip(wiki_paragraphs[:40], val_ids, strict=True)]
    # A training paragraph with 20 words of a validation paragraph pasted into its middle, in other case
    # and with the punctuation of a copy-paste gone wrong; and 13 words of one (the least that counts).
    quoted = " ".join(val[7].text.split()[30:50]).upper().replace(",", " ,")
    host = wiki_paragraphs[100].split()
    planted = " ".join(host[:40]) + " " + quoted + " " + " ".join(host[40:])
    just_13 = speeches[5] + " " + " ".join(words(val[9].text)[10:23])
    just_12 = speeches[6] + " " + " ".join(words(val[11].text)[10:22])
    texts = wiki_paragraphs[200:396] + speeches[:4] + [planted, just_13, just_12]
    train = [doc(t, i) for t, i in zip(texts, train_ids, strict=True)]
    docs = val[:20] + train[:100] + val[20:] + train[100:]  # the last validation passage comes after training text
    step = Decontaminate(DecontaminateStep(), VAL_FRACTION)
    kept, dropped, stats = run(step, docs)
    assert [d.id for _, d in dropped] == [planted_id, id_13] and stats.dropped == {"contaminated": 2}
    info = {d.id: d.meta["contamination"] for _, d in dropped}
    assert info[planted_id]["against"] == f"val:{val[7].id}" and info[planted_id]["matches"] >= 20 - 13 + 1
    assert info[planted_id]["ngram"] in " ".join(words(val[7].text))
    assert info[id_13]["against"] == f"val:{val[9].id}" and info[id_13]["matches"] >= 1
    # Validation documents pass at once and in order; training documents follow in theirs.
    assert [d.id for d in kept if d.id in val_ids] == [d.id for d in val]
    assert [d.id for d in kept if d.id not in val_ids] == [d.id for d in train if d.id not in (planted_id, id_13)]
    assert step.summary()["dropped_by"] == {"val": 2}


def test_held_out_files_are_checked_and_named(tmp_path: Path, wiki_paragraphs: list[str]) -> None:
    (tmp_path / "heldout.txt").write_text(wiki_paragraphs[3], "utf-8")
    task = [{"query": wiki_paragraphs[4], "choices": ["yes", "no"], "gold": 0}, {"query": "Too short to count."}]
    (tmp_path / "task.jsonl").write_text("\n".join(json.dumps(r) for r in task) + "\n", "utf-8")
    (tmp_path / "task.yaml").write_text("task: mine\ndataset_path: json\n", "utf-8")
    texts = list(held_out_texts(sorted(tmp_path.iterdir())))
    assert [label for label, _ in texts] == [str(tmp_path / "heldout.txt"), f"{tmp_path / 'task.jsonl'}:1",
                                             f"{tmp_path / 'task.jsonl'}:2"]
    step = Decontaminate(DecontaminateStep(val=False), 0.0, texts)
    train = [doc(wiki_paragraphs[10] + "\n\n" + wiki_paragraphs[4], "a"), doc(wiki_paragraphs[3], "b"),
             doc(wiki_paragraphs[11], "c")]
    kept, dropped, _ = run(step, train)
    assert [d.id for d in kept] == ["c"]
    assert [d.meta["contamination"]["against"] for _, d in dropped] == [f"{tmp_path / 'task.jsonl'}:1",
                                                                        str(tmp_path / "heldout.txt")]
    assert step.summary()["texts_too_short"] == 1 and step.summary()["held_out_texts"] == 3


def test_min_matches_and_index_rules(wiki_paragraphs: list[str]) -> None:
    index = NGramIndex(13)
    index.add(wiki_paragraphs[0], "a")
    index.add(wiki_paragraphs[0], "b")  # the same n-grams keep the first label
    assert 0 < len(index) <= len(words(wiki_paragraphs[0])) - 12
    found = index.matches("Some words first. " + wiki_paragraphs[0])
    assert found is not None and found[2] == "a" and found[0] == len(index)
    assert index.matches(wiki_paragraphs[1]) is None and index.matches("") is None
    step = Decontaminate(DecontaminateStep(val=False, min_matches=len(index) + 1), 0.0, [("x", wiki_paragraphs[0])])
    kept, dropped, _ = run(step, [doc(wiki_paragraphs[0], "t")])
    assert len(kept) == 1 and not dropped
    with pytest.raises(ValidationError):
        DecontaminateStep(ngram=2)
