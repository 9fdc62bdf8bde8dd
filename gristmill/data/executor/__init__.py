"""Executors: where a data stage's units of work run (this process, a local process pool, Ray)."""

from __future__ import annotations

from typing import Any

from gristmill.data.executor.base import Executor, InlineExecutor, Task, run_tasks

__all__ = ["Executor", "InlineExecutor", "Task", "run_tasks", "make_executor"]


AUTO_POOL_MIN_BYTES = 16_000_000
"""With ``workers`` left to default, input smaller than this is read in this process: starting worker
processes (each imports its readers) costs more than it saves."""


def make_executor(options: Any, tasks: list[Task]) -> Executor:
    """The executor a config's ``executor``/``workers``/``ray_address`` ask for (``ExecutorOptions``)."""
    if options.executor == "ray":
        from gristmill.data.executor.ray import RayExecutor

        return RayExecutor(options.ray_address, options.workers)
    from gristmill.data.executor.local import LocalExecutor, default_workers

    workers = options.workers or default_workers()
    small = options.workers is None and sum(t.input_bytes for t in tasks) < AUTO_POOL_MIN_BYTES
    if workers <= 1 or len(tasks) <= 1 or small:
        return InlineExecutor()
    return LocalExecutor(workers)
