"""Running a data stage's units of work (tasks) with completion markers, on any executor.

A :class:`Task` is one input shard: its ``index`` numbers its output shards and its marker, its ``key``
hashes everything that decides its output (config, files with their sizes and times, seed, version).
:func:`run_tasks` skips every task whose marker holds the same key, runs the rest on an executor (this
process, a local process pool, Ray), and returns every task's stats in task order. A task writes its
shards, then its marker, so a run that is killed and started again finishes only the tasks without one;
and because a task's output depends on nothing but its input, the output bytes do not depend on how many
workers ran, in which order, or how often the run was interrupted.

The function a task runs must be importable by name (a module-level function): worker processes and Ray
receive it by reference. It is called as ``fn(payload, report)``; ``report(documents, text_bytes)``
sends progress to the parent (cheap: call it as often as you like).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gristmill.core.progress import Progress
from gristmill.core.workspace import sha256_file
from gristmill.formats import shards

Report = Callable[[int, int], None]
TaskFn = Callable[[Any, Report], dict[str, Any]]
REPORT_EVERY_S = 1.0
"""Workers send progress at most this often."""


@dataclass(frozen=True)
class Task:
    """One unit of work: an input shard."""

    index: int
    """Its number: its output shards are ``<split>/<index>.parquet``, its marker ``done/<index>.json``."""
    key: str
    """Hash of everything that decides its output: a marker with another key is stale."""
    label: str
    """What it reads, for messages (``source 'wiki', 1 file``)."""
    input_bytes: int
    """Bytes of input it reads (for progress and ETA)."""
    payload: Any
    """What ``fn`` needs (picklable)."""


class Executor(Protocol):
    """Runs tasks somewhere; yields ``(task, marker)`` as each finishes (any order)."""

    name: str

    def run(self, fn: TaskFn, stage_dir: Path, tasks: list[Task], splits: tuple[str, ...],
            progress: Progress) -> Iterator[tuple[Task, dict[str, Any]]]: ...


def clear_task(stage_dir: Path, index: int, splits: tuple[str, ...]) -> None:
    """Remove a task's marker and shards before it runs (a shard it no longer writes must not remain)."""
    shards.marker_path(stage_dir, index).unlink(missing_ok=True)
    for split in splits:
        (Path(stage_dir) / split / shards.shard_name(index)).unlink(missing_ok=True)


def execute_task(fn: TaskFn, stage_dir: Path, task: Task, splits: tuple[str, ...], report: Report) -> dict[str, Any]:
    """Run one task where it is (this process, a pool worker, a Ray worker) and write its marker last."""
    clear_task(stage_dir, task.index, splits)
    started = time.perf_counter()
    stats = fn(task.payload, report)
    marker = {"key": task.key, "label": task.label, "input_bytes": task.input_bytes,
              "seconds": round(time.perf_counter() - started, 3), "outputs": task_outputs(stage_dir, task.index, splits),
              "stats": stats}
    shards.write_marker(stage_dir, task.index, marker)
    return marker


def task_outputs(stage_dir: Path, index: int, splits: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The shards a task wrote, with their size and sha256 (``split/NNNNN.parquet`` -> ...)."""
    out = {}
    for split in splits:
        p = Path(stage_dir) / split / shards.shard_name(index)
        if p.is_file():
            out[f"{split}/{p.name}"] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def marker_current(stage_dir: Path, task: Task, marker: dict[str, Any] | None, splits: tuple[str, ...]) -> bool:
    """Whether a task's marker is for this task and its shards are still as it wrote them (a shard changed
    or deleted since makes the task run again)."""
    if marker is None or marker.get("key") != task.key or not isinstance(marker.get("outputs"), dict):
        return False
    return marker["outputs"] == task_outputs(stage_dir, task.index, splits)


class Throttled:
    """A report function that adds up counts and passes them on at most every ``REPORT_EVERY_S``."""

    def __init__(self, send: Callable[[int, int], None]):
        self.send = send
        self.docs = self.bytes = 0
        self.last = time.monotonic()

    def __call__(self, documents: int, nbytes: int) -> None:
        self.docs += documents
        self.bytes += nbytes
        now = time.monotonic()
        if now - self.last >= REPORT_EVERY_S:
            self.flush()
            self.last = now

    def flush(self) -> None:
        if self.docs or self.bytes:
            self.send(self.docs, self.bytes)
            self.docs = self.bytes = 0


class InlineExecutor:
    """Every task in this process, one after the other (one worker, or one task to run)."""

    name = "inline"

    def run(self, fn: TaskFn, stage_dir: Path, tasks: list[Task], splits: tuple[str, ...],
            progress: Progress) -> Iterator[tuple[Task, dict[str, Any]]]:
        for task in tasks:
            report = Throttled(lambda d, b: progress.add(documents=d, nbytes=b))
            marker = execute_task(fn, stage_dir, task, splits, report)
            report.flush()
            yield task, marker


def remove_stale(stage_dir: Path, n_tasks: int, splits: tuple[str, ...]) -> None:
    """Drop markers and shards of tasks past the plan (a source or file removed), and temporaries a killed
    run left behind."""
    stage_dir = Path(stage_dir)
    for folder in [stage_dir / shards.DONE, *(stage_dir / s for s in splits)]:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            index = shards.shard_index(p) if p.suffix == shards.SHARD_SUFFIX else (
                int(p.stem) if p.suffix == ".json" and p.stem.isdigit() else None)
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)
            elif index is not None and index >= n_tasks:
                p.unlink(missing_ok=True) if p.is_file() else shutil.rmtree(p)


def run_tasks(fn: TaskFn, stage_dir: Path, tasks: list[Task], splits: tuple[str, ...], executor: Executor,
              log: Callable[[str], None], label: str) -> list[dict[str, Any]]:
    """Run the tasks whose markers are missing or stale; return every task's marker, in task order."""
    stage_dir = Path(stage_dir).resolve()
    remove_stale(stage_dir, len(tasks), splits)
    markers: dict[int, dict[str, Any]] = {}
    todo = []
    for task in tasks:
        marker = shards.read_marker(stage_dir, task.index)
        if marker_current(stage_dir, task, marker, splits):
            markers[task.index] = marker
        else:
            todo.append(task)
    if markers:
        log(f"[{label}] {len(markers)} of {len(tasks)} input shards already done (completion markers); "
            f"running {len(todo)}")
    progress = Progress(label, len(todo), sum(t.input_bytes for t in todo), log)
    try:
        for task, marker in executor.run(fn, stage_dir, todo, splits, progress):
            markers[task.index] = marker
            progress.add(units=1, input_bytes=task.input_bytes)
    finally:
        progress.close()
    return [markers[t.index] for t in tasks]
