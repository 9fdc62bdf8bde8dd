"""The huggingface source through the collect stage: a dataset saved with ``save_to_disk`` (made here from
real Shakespeare lines), local data files read with the datasets library, and a Hub name offline, which
fails at once with one sentence instead of the library's minutes of retries."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gristmill.core.paths import expand
from gristmill.core.workspace import StageContext
from gristmill.data.config import CollectConfig
from gristmill.errors import InputError
from gristmill.formats.document import read_documents, read_quarantine
from gristmill.stages.collect import check_config
from gristmill.stages.collect import run as run_collect

datasets = pytest.importorskip("datasets")


def collect(tmp_path: Path, *sources: dict) -> tuple[dict, list, list]:
    ctx = StageContext(run_dir=tmp_path / "run", stage="collect", seed=1, log=lambda m: None)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    stats = run_collect(ctx, CollectConfig(sources=list(sources)))
    return stats, list(read_documents(ctx.out_dir)), list(read_quarantine(ctx.out_dir))


def hamlet_speeches(n: int = 40) -> list[str]:
    text = expand("pkg://shksprdata/texts/hamlet_gut.txt")[0].read_text(encoding="utf-8")
    paras = [p.strip() for p in text[text.index("ACT I"):].split("\n\n") if len(p.strip()) > 80]
    return paras[:n]


def test_a_saved_dataset_dict_with_metadata(tmp_path: Path) -> None:
    speeches = hamlet_speeches()
    rows = {"speech": speeches, "act": [i // 10 + 1 for i in range(len(speeches))], "title": ["Hamlet"] * len(speeches)}
    rows["speech"][3] = None  # a row without text
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                               "test": datasets.Dataset.from_dict({k: v[:2] for k, v in rows.items()})})
    ds.save_to_disk(str(tmp_path / "hamlet_ds"))
    src = {"name": "hamlet", "type": "huggingface", "path": str(tmp_path / "hamlet_ds"), "text_field": "speech",
           "metadata_fields": ["act"], "license": "Public domain"}
    stats, docs, quarantine = collect(tmp_path, src)
    assert len(docs) == len(speeches) - 1 and docs[0].text == speeches[0]
    assert docs[0].meta == {"act": 1} and docs[-1].meta == {"act": 4} and docs[0].provenance.title == "Hamlet"
    assert docs[0].provenance.record == "0" and docs[0].provenance.reader == "huggingface"
    assert docs[0].provenance.uri.endswith("hamlet_ds#train/0") and docs[0].provenance.license == "Public domain"
    assert [(q["reason"], q["document"]["provenance"]["record"]) for q in quarantine] == [("missing_field", "3")]
    assert stats["sources"]["hamlet"]["type"] == "huggingface"
    _, test_docs, _ = collect(tmp_path / "t", {**src, "split": "test"})
    assert [d.text for d in test_docs] == speeches[:2]
    with pytest.raises(InputError, match="has no split 'dev'"):
        collect(tmp_path / "d", {**src, "split": "dev"})


def test_local_data_files_through_the_datasets_library(tmp_path: Path) -> None:
    speeches = hamlet_speeches(10)
    datasets.Dataset.from_dict({"text": speeches, "n": list(range(10))}).to_json(str(tmp_path / "s.jsonl"))
    _, docs, _ = collect(tmp_path, {"name": "s", "type": "huggingface", "path": str(tmp_path / "*.jsonl"),
                                    "metadata_fields": ["n"]})
    assert [d.text for d in docs] == speeches and docs[4].meta == {"n": 4}


def test_a_hub_name_offline_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = CollectConfig(sources=[{"name": "web", "type": "huggingface", "path": "someuser/some-dataset"}])
    started = time.monotonic()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=r"'someuser/some-dataset' is a Hugging Face Hub name and HF_HUB_OFFLINE"):
        check_config(cfg, None)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: as if offline
    with pytest.raises(InputError, match=r"cannot be reached .*looks offline"):
        check_config(cfg, None)
    assert time.monotonic() - started < 10
    with pytest.raises(InputError, match="neither a local path nor a Hub name"):
        check_config(CollectConfig(sources=[{"name": "x", "type": "huggingface", "path": "./no/such/dir"}]), None)
