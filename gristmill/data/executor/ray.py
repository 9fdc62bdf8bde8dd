"""The Ray executor (the ``ray`` extra): each task is a Ray task, on a cluster or on a local Ray.

With ``ray_address`` the tasks go to that running cluster (every node needs Gristmill installed and the
run's input and output paths mounted at the same place); without one a local Ray is started with
``workers`` CPUs for the run and shut down after it. Ray is imported only here, when a recipe asks for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gristmill.core.extras import require
from gristmill.core.progress import Progress
from gristmill.data.executor.base import Task, TaskFn, execute_task

MAX_RETRIES = 2
"""A task whose worker died is tried again this many times (its output is rewritten whole)."""


def _ray_task(fn: TaskFn, stage_dir: Path, task: Task, splits: tuple[str, ...]) -> dict[str, Any]:
    return execute_task(fn, stage_dir, task, splits, lambda d, b: None)


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None, workers: int | None):
        self.ray = require("ray", extra="ray", feature="executor: ray")
        self.address = address
        self.workers = workers

    def run(self, fn: TaskFn, stage_dir: Path, tasks: list[Task], splits: tuple[str, ...],
            progress: Progress) -> Iterator[tuple[Task, dict[str, Any]]]:
        if not tasks:
            return
        ray = self.ray
        started_here = not ray.is_initialized()
        if started_here:
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.address is None:
                kw["num_cpus"] = self.workers
            ray.init(address=self.address, **kw)
        try:
            remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_ray_task)
            stage_dir = Path(stage_dir).resolve()
            pending = {remote.remote(fn, stage_dir, t, splits): t for t in tasks}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for ref in done:
                    task = pending.pop(ref)
                    marker = ray.get(ref)
                    progress.add(documents=int(marker["stats"].get("documents", 0)),
                                 nbytes=int(marker["stats"].get("bytes", 0)))
                    yield task, marker
        finally:
            if started_here:
                ray.shutdown()
