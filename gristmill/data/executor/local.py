"""The local executor: a pool of worker processes on this machine, one task at a time each.

Workers are started with ``spawn`` (a fresh interpreter that imports only what a task needs: forking a
process that holds threads, as one that imported torch does, can deadlock). Each sends progress through a
queue; the parent prints it. A task that raises stops the run with that error once the tasks already
running have finished (their markers are kept, so the next run does not repeat them).
"""

from __future__ import annotations

import os
import queue as queue_lib
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from gristmill.core.progress import Progress
from gristmill.data.executor.base import Task, TaskFn, Throttled, execute_task

_QUEUE: Any = None
"""The progress queue, in a worker process (set by the pool's initializer)."""


def default_workers() -> int:
    """One worker per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _init_worker(q: Any) -> None:
    global _QUEUE
    _QUEUE = q


def _run_in_worker(fn: TaskFn, stage_dir: Path, task: Task, splits: tuple[str, ...]) -> dict[str, Any]:
    report = Throttled(lambda d, b: _QUEUE.put((d, b)))
    marker = execute_task(fn, stage_dir, task, splits, report)
    report.flush()
    return marker


class LocalExecutor:
    """Tasks on ``workers`` processes (never more processes than tasks)."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = workers

    def run(self, fn: TaskFn, stage_dir: Path, tasks: list[Task], splits: tuple[str, ...],
            progress: Progress) -> Iterator[tuple[Task, dict[str, Any]]]:
        if not tasks:
            return
        ctx = get_context("spawn")
        q = ctx.Queue()

        def drain() -> None:
            while True:
                try:
                    d, b = q.get_nowait()
                except queue_lib.Empty:
                    return
                progress.add(documents=d, nbytes=b)

        with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=ctx,
                                 initializer=_init_worker, initargs=(q,)) as pool:
            running: dict[Future[dict[str, Any]], Task] = {
                pool.submit(_run_in_worker, fn, stage_dir, t, splits): t for t in tasks}
            error: BaseException | None = None
            while running:
                done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                drain()
                for fut in done:
                    task = running.pop(fut)
                    try:
                        marker = fut.result()
                    except BaseException as e:  # re-raised below, after the running tasks finish
                        if error is None:
                            error = e
                            for other in running:
                                other.cancel()
                        continue
                    yield task, marker
                running = {f: t for f, t in running.items() if not f.cancelled()}
            drain()
            if error is not None:
                raise error
