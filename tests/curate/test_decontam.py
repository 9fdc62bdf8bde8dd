"""Decontamination on real paragraphs: planted copies of validation and held-out passages in training text."""

from __future__ import annotations

import json
from collections.abc import Iterable
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


def run(step: Decontaminate, docs: Iterable[Document]) -> tuple[list[Document], list[tuple[str, Document]], StepStats]:
    dropped: list[tuple[str, Document]] = []
    stats = StepStats(name=step.name, quarantine=lambda d, _s, reason: dropped.append((reason, d)))
    kept = list(counted(step, docs, stats))
    assert stats.seen == stats.kept + len(dropped) == (len(docs) if isinstance(docs, list) else stats.seen)
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


def test_the_streaming_step_gives_what_holding_every_document_gave(tmp_path: Path, wiki_paragraphs: list[str],
                                                                   speeches: list[str]) -> None:
    """Training documents wait on disk (here from the first), not in memory; the outcome is what indexing every validation
    document first and then judging the training documents in order gives."""
    n = 600
    names = [f"doc{i}" for i in range(n)]
    texts = wiki_paragraphs[:n]
    # Every 10th training text quotes 15 words of a later validation document.
    val_at = [i for i in range(n) if split_of(names[i], VAL_FRACTION) == "val"]
    train_at = [i for i in range(n) if i not in set(val_at)]
    for k, i in enumerate(train_at[::10]):
        src = val_at[-1 - k % 20]
        texts[i] = speeches[k] + " " + " ".join(words(texts[src])[:15])
    docs = [doc(t, name) for t, name in zip(texts, names, strict=True)]
    docs[train_at[3]].meta["quality"] = {"c4_lines": 3, "ratio": 0.5}
    index = NGramIndex(13)
    for i in val_at:
        index.add(texts[i], f"val:{names[i]}")
    expected = [names[i] for i in train_at if index.matches(texts[i]) is None]
    step = Decontaminate(DecontaminateStep(), VAL_FRACTION, work_dir=tmp_path / "work", memory_chars=0)
    kept, dropped, stats = run(step, (d for d in docs))
    assert stats.seen == n
    assert [d.id for d in kept] == [names[i] for i in val_at] + expected
    assert len(dropped) == len(train_at) - len(expected) >= 20
    assert {d.id: d.meta["contamination"]["against"] for _, d in dropped} == {
        names[i]: index.matches(texts[i])[2] for i in train_at if index.matches(texts[i]) is not None}
    assert next(d for d in kept if d.id == names[train_at[3]]).meta == {"quality": {"c4_lines": 3, "ratio": 0.5}}
    assert not any((tmp_path / "work").iterdir())  # the spooled documents are gone
