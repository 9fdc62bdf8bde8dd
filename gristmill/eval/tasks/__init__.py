"""Evaluation tasks in lm-evaluation-harness's format: a YAML file per task over local JSONL data.

``load_tasks(paths)`` reads task files (a YAML file, or a folder searched for them) into :class:`Task`
objects; ``spec`` checks the keys, ``base`` builds prompts and turns scores into metrics, ``builtin``
makes a cloze and a continuation task from held-out documents. Nothing here imports torch: the harness
(``gristmill.eval.harness``) runs a model on the tasks.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from gristmill.errors import ConfigError
from gristmill.eval.tasks.base import Item, Skipped, Task
from gristmill.eval.tasks.spec import TaskSpec, parse_spec, read_yaml

__all__ = ["Item", "Skipped", "Task", "TaskSpec", "load_task", "load_tasks"]

YAML_SUFFIXES = (".yaml", ".yml")


def load_task(path: str | Path) -> Task:
    """One task file."""
    return Task(parse_spec(Path(path)))


def load_tasks(paths: str | Path | Iterable[str | Path]) -> list[Task]:
    """The tasks of YAML files and of folders (searched recursively; a YAML without a ``task`` key there is
    a template for ``include`` and is passed over), in the order given, each folder's files sorted.
    Two tasks with one name is a ConfigError naming both files."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    tasks: list[Task] = []
    seen: dict[str, Path] = {}
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix in YAML_SUFFIXES and f.is_file())
            specs = []
            for f in files:
                raw = read_yaml(f)
                if "task" in raw:
                    specs.append(parse_spec(f, raw))
            if not specs:
                raise ConfigError(f"{p} holds no task files (YAML files with a 'task' key)")
        elif p.is_file():
            specs = [parse_spec(p)]
        else:
            raise ConfigError(f"task path {p} does not exist; give a task YAML file or a folder of them")
        for spec in specs:
            if spec.name in seen:
                raise ConfigError(f"task '{spec.name}' is defined twice: in {seen[spec.name]} and {spec.path}; "
                                  f"rename one")
            seen[spec.name] = spec.path
            tasks.append(Task(spec))
    return tasks
