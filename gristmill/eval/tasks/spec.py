"""A task file in lm-evaluation-harness's format, read and checked: ``TaskSpec`` (no torch).

One YAML file names one task over local JSONL data::

    task: my_task
    dataset_path: json
    dataset_kwargs: {data_files: {test: my_task.jsonl}}   # relative to this file's folder
    test_split: test
    output_type: multiple_choice
    doc_to_text: "{{question}}"
    doc_to_choice: choices            # a field, a Jinja2 template giving a list, or a literal list
    doc_to_target: label

``include: base.yaml`` merges another file first (this file's keys win), as lm-eval does. Every other key
lm-eval knows but Gristmill cannot honour (Python hooks, filters, Hugging Face datasets, chat prompts) is
a one-line :class:`~gristmill.errors.ConfigError` naming the file and the key, never silently ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gristmill.errors import ConfigError

OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling", "generate_until")

METRICS: dict[str, dict[str, tuple[str, bool]]] = {
    "multiple_choice": {"acc": ("mean", True), "acc_norm": ("mean", True), "acc_bytes": ("mean", True),
                        "exact_match": ("mean", True)},
    "loglikelihood": {"perplexity": ("perplexity", False), "acc": ("mean", True)},
    "loglikelihood_rolling": {"word_perplexity": ("weighted_perplexity", False),
                              "byte_perplexity": ("weighted_perplexity", False),
                              "bits_per_byte": ("bits_per_byte", False)},
    "generate_until": {"exact_match": ("mean", True), "f1": ("mean", True)},
}
"""Metrics each output type can report: name -> (lm-eval's aggregation, higher is better)."""

DEFAULT_METRICS = {"multiple_choice": ("acc", "acc_norm"), "loglikelihood": ("perplexity", "acc"),
                   "loglikelihood_rolling": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
                   "generate_until": ("exact_match",)}
"""lm-eval's metrics for a task without ``metric_list``."""

EXACT_MATCH_OPTIONS = ("ignore_case", "ignore_punctuation", "ignore_numbers", "regexes_to_ignore")
DEFAULT_MAX_GEN_TOKS = 256
"""lm-eval's default number of tokens to generate."""

_KNOWN = {
    "task", "task_alias", "tag", "dataset_path", "dataset_name", "dataset_kwargs", "training_split",
    "validation_split", "test_split", "fewshot_split", "output_type", "doc_to_text", "doc_to_target",
    "doc_to_choice", "target_delimiter", "fewshot_delimiter", "description", "num_fewshot",
    "generation_kwargs", "metric_list", "metadata", "repeats", "should_decontaminate",
    "doc_to_decontamination_query",
}
_UNSUPPORTED = {
    "process_docs": "Python document hooks are not supported; precompute the fields in the JSONL",
    "process_results": "Python result hooks are not supported; use the built-in metrics",
    "filter_list": "answer filters are not supported; score the raw output with exact_match options",
    "use_prompt": "promptsource prompts are not supported; write doc_to_text as a Jinja2 template",
    "custom_dataset": "custom dataset functions are not supported; use dataset_path: json",
    "doc_to_image": "multimodal tasks are not supported",
    "doc_to_audio": "multimodal tasks are not supported",
    "fewshot_config": "fewshot_config is not supported; use fewshot_split and num_fewshot",
    "gen_prefix": "gen_prefix is not supported",
    "unsafe_code": "tasks that execute code are not supported",
    "group": "task groups are not supported; list the task files instead",
    "group_alias": "task groups are not supported; list the task files instead",
    "aggregate_metric_list": "task groups are not supported; list the task files instead",
    "class": "Python task classes are not supported",
}


@dataclass(frozen=True)
class Function:
    """A ``!function module.name`` hook found in a YAML file (Gristmill does not run Python hooks)."""

    target: str


class _Loader(yaml.SafeLoader):
    """Safe YAML plus lm-eval's ``!function`` tag, read as a marker so its key can be named in the error."""


_Loader.add_constructor("!function", lambda loader, node: Function(loader.construct_scalar(node)))


@dataclass(frozen=True)
class MetricSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    """exact_match's options (ignore_case, ignore_punctuation, ignore_numbers, regexes_to_ignore)."""


@dataclass(frozen=True)
class GenerationSpec:
    until: tuple[str, ...]
    """Stop strings: the output ends before the first of them."""
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS


@dataclass(frozen=True)
class TaskSpec:
    """A checked task file. Templates are kept as written; :class:`~gristmill.eval.tasks.base.Task` renders."""

    name: str
    path: Path
    """The YAML file (errors name it)."""
    output_type: str
    data_files: dict[str, tuple[Path, ...]]
    """Split name -> its JSONL files (absolute)."""
    eval_split: str
    """test_split if given, else validation_split (as lm-eval)."""
    fewshot_split: str | None
    """Where few-shot examples come from: fewshot_split, else training, validation or test split."""
    doc_to_text: str | None = None
    doc_to_target: str | int | list[Any] | None = None
    doc_to_choice: str | list[Any] | dict[str, Any] | None = None
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""
    num_fewshot: int = 0
    generation: GenerationSpec | None = None
    metrics: tuple[MetricSpec, ...] = ()
    alias: str | None = None


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in a task file, with ``include`` files merged first (the including file's keys win)."""
    path = Path(path).expanduser().resolve()
    if path in _seen:
        raise ConfigError(f"{_seen[-1]}: include loops back to {path}; remove the cycle")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        where = f"{_seen[-1]}: include " if _seen else ""
        raise ConfigError(f"{where}cannot read task file {path}: {e.strerror}") from e
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of task keys, not a {type(data).__name__}")
    includes = data.pop("include", None)
    if includes is None:
        return data
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        if not isinstance(inc, str):
            raise ConfigError(f"{path}: include must be a file name or a list of them, got {inc!r}")
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        merged.update(read_yaml(inc_path, (*_seen, path)))
    merged.update(data)
    return merged


def parse_spec(path: Path, raw: dict[str, Any] | None = None) -> TaskSpec:
    """Check a task file's keys and values; ConfigError (one line: the file, the key, what to do) if wrong."""
    path = Path(path).expanduser().resolve()
    raw = read_yaml(path) if raw is None else raw
    where = str(path)

    for key, value in raw.items():
        hook = _find_function(value)
        if hook is not None:
            raise ConfigError(f"{where}: key '{key}' uses `!function {hook.target}`: Python hooks are not "
                              f"supported by Gristmill; write it as a Jinja2 template or precompute the "
                              f"field in the JSONL")
        if key in _UNSUPPORTED:
            raise ConfigError(f"{where}: key '{key}' is not supported: {_UNSUPPORTED[key]}")
        if key not in _KNOWN:
            raise ConfigError(f"{where}: unknown key '{key}' (supported: {', '.join(sorted(_KNOWN))}, include)")

    name = raw.get("task")
    if isinstance(name, list):
        raise ConfigError(f"{where}: key 'task' is a list: task groups are not supported; list the task files")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: key 'task' is missing; name the task (task: my_task)")

    output_type = raw.get("output_type", "generate_until")
    if output_type not in OUTPUT_TYPES:
        raise ConfigError(f"{where}: key 'output_type' is '{output_type}', not one of {', '.join(OUTPUT_TYPES)}")

    dataset_path = raw.get("dataset_path")
    if dataset_path != "json":
        raise ConfigError(f"{where}: key 'dataset_path' is {dataset_path!r}: Gristmill reads local JSONL only "
                          f"(dataset_path: json with dataset_kwargs: {{data_files: {{test: file.jsonl}}}})")
    if raw.get("dataset_name") is not None:
        raise ConfigError(f"{where}: key 'dataset_name' is not supported with local JSONL; remove it")
    data_files = _data_files(raw.get("dataset_kwargs"), path)

    splits = {}
    for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
        value = raw.get(key)
        if value is not None and value not in data_files:
            raise ConfigError(f"{where}: key '{key}' names split '{value}' but data_files has "
                              f"{', '.join(sorted(data_files)) or 'no splits'}")
        splits[key] = value
    eval_split = splits["test_split"] or splits["validation_split"]
    if eval_split is None:
        raise ConfigError(f"{where}: set test_split or validation_split (the split that is scored)")

    num_fewshot = raw.get("num_fewshot") or 0
    if not isinstance(num_fewshot, int) or isinstance(num_fewshot, bool) or num_fewshot < 0:
        raise ConfigError(f"{where}: key 'num_fewshot' must be a whole number >= 0, got {num_fewshot!r}")
    fewshot_split = (splits["fewshot_split"] or splits["training_split"] or splits["validation_split"]
                     or splits["test_split"])

    for key in ("doc_to_text", "description", "target_delimiter", "fewshot_delimiter"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            if key == "doc_to_text" and isinstance(value, int):
                raise ConfigError(f"{where}: key 'doc_to_text' is a number: multiple-input tasks (a choice index "
                                  f"as the prompt, as Winogrande) are not supported")
            raise ConfigError(f"{where}: key '{key}' must be a string, got {type(value).__name__}")
    text, target, choice = raw.get("doc_to_text"), raw.get("doc_to_target"), raw.get("doc_to_choice")
    if output_type != "loglikelihood_rolling" and text is None:
        raise ConfigError(f"{where}: key 'doc_to_text' is missing; give a field name or a template")
    if target is None:
        raise ConfigError(f"{where}: key 'doc_to_target' is missing; give a field name or a template")
    if not isinstance(target, (str, int, list)) or isinstance(target, bool):
        raise ConfigError(f"{where}: key 'doc_to_target' must be a field, a template, an index or a list")
    if output_type == "multiple_choice" and choice is None:
        raise ConfigError(f"{where}: key 'doc_to_choice' is missing: a multiple_choice task needs its choices")
    if choice is not None and not isinstance(choice, (str, list, dict)):
        raise ConfigError(f"{where}: key 'doc_to_choice' must be a field, a template, a list or a mapping")

    repeats = raw.get("repeats", 1)
    if repeats != 1:
        raise ConfigError(f"{where}: key 'repeats' is {repeats!r}: only 1 is supported (greedy decoding)")

    generation = None
    if output_type == "generate_until":
        generation = _generation(raw.get("generation_kwargs"), _or(raw.get("fewshot_delimiter"), "\n\n"), where)
    elif raw.get("generation_kwargs") is not None:
        raise ConfigError(f"{where}: key 'generation_kwargs' only applies to output_type generate_until")

    return TaskSpec(
        name=name, path=path, output_type=output_type, data_files=data_files, eval_split=eval_split,
        fewshot_split=fewshot_split, doc_to_text=text, doc_to_target=target, doc_to_choice=choice,
        target_delimiter=_or(raw.get("target_delimiter"), " "),
        fewshot_delimiter=_or(raw.get("fewshot_delimiter"), "\n\n"),
        description=raw.get("description") or "", num_fewshot=num_fewshot, generation=generation,
        metrics=_metrics(raw.get("metric_list"), output_type, where), alias=raw.get("task_alias"),
    )


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _find_function(value: Any) -> Function | None:
    if isinstance(value, Function):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for v in value:
            hook = _find_function(v)
            if hook is not None:
                return hook
    return None


def _data_files(kwargs: Any, path: Path) -> dict[str, tuple[Path, ...]]:
    where = str(path)
    if not isinstance(kwargs, dict) or "data_files" not in kwargs:
        raise ConfigError(f"{where}: key 'dataset_kwargs' must give data_files "
                          f"(dataset_kwargs: {{data_files: {{test: file.jsonl}}}})")
    extra = sorted(set(kwargs) - {"data_files"})
    if extra:
        raise ConfigError(f"{where}: key 'dataset_kwargs.{extra[0]}' is not supported; only data_files is")
    files = kwargs["data_files"]
    if isinstance(files, (str, list)):
        files = {"train": files}  # as the datasets library names a bare file list
    if not isinstance(files, dict) or not files:
        raise ConfigError(f"{where}: key 'dataset_kwargs.data_files' must map split names to JSONL files")
    out = {}
    for split, names in files.items():
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where}: key 'dataset_kwargs.data_files.{split}' must be a file or a list of files")
        resolved = []
        for n in names:
            p = Path(n).expanduser()
            p = p if p.is_absolute() else path.parent / p
            if not p.is_file():
                raise ConfigError(f"{where}: key 'dataset_kwargs.data_files.{split}' names {p}, which does not "
                                  f"exist (relative paths are read from the YAML file's folder)")
            resolved.append(p)
        out[str(split)] = tuple(resolved)
    return out


def _generation(kwargs: Any, fewshot_delimiter: str, where: str) -> GenerationSpec:
    if kwargs is None:
        return GenerationSpec(until=(fewshot_delimiter,))
    try:
        return parse_generation_kwargs(kwargs, default_until=fewshot_delimiter)
    except ValueError as e:
        raise ConfigError(f"{where}: key 'generation_kwargs' {e}") from None


def parse_generation_kwargs(kwargs: Any, default_until: str | None = None,
                            default_max: int = DEFAULT_MAX_GEN_TOKS) -> GenerationSpec:
    """``until`` and ``max_gen_toks`` of lm-eval's generation kwargs; greedy decoding only (``do_sample``
    false, ``temperature`` 0). ValueError naming the offending entry otherwise."""
    if not isinstance(kwargs, dict):
        raise ValueError(f"must be a mapping, got {type(kwargs).__name__}")
    allowed = {"until", "max_gen_toks", "do_sample", "temperature"}
    extra = sorted(set(kwargs) - allowed)
    if extra:
        raise ValueError(f"has '{extra[0]}', which is not supported (supported: {', '.join(sorted(allowed))}; "
                         f"decoding is greedy)")
    if kwargs.get("do_sample"):
        raise ValueError("asks for do_sample: true; only greedy decoding is supported")
    if kwargs.get("temperature") not in (None, 0, 0.0):
        raise ValueError(f"asks for temperature {kwargs['temperature']}; only greedy decoding (0) is supported")
    until = kwargs.get("until")
    if until is None:
        until = [] if default_until is None else [default_until]
    until = [until] if isinstance(until, str) else until
    if not isinstance(until, list) or not all(isinstance(u, str) for u in until):
        raise ValueError("has 'until' that is not a string or a list of strings")
    max_gen = kwargs.get("max_gen_toks", default_max)
    if not isinstance(max_gen, int) or isinstance(max_gen, bool) or max_gen < 1:
        raise ValueError(f"has max_gen_toks {max_gen!r}; give a whole number >= 1")
    return GenerationSpec(until=tuple(u for u in until if u), max_gen_toks=max_gen)


def _metrics(metric_list: Any, output_type: str, where: str) -> tuple[MetricSpec, ...]:
    known = METRICS[output_type]
    if metric_list is None:
        return tuple(MetricSpec(m) for m in DEFAULT_METRICS[output_type])
    if not isinstance(metric_list, list) or not metric_list:
        raise ConfigError(f"{where}: key 'metric_list' must be a list of {{metric: name}} entries")
    out = []
    for entry in metric_list:
        if not isinstance(entry, dict) or "metric" not in entry:
            raise ConfigError(f"{where}: key 'metric_list' has an entry without 'metric': {entry!r}")
        name = entry["metric"]
        if name not in known:
            raise ConfigError(f"{where}: key 'metric_list' names metric {name!r}, which output_type {output_type} "
                              f"cannot report (supported: {', '.join(known)})")
        agg, higher = known[name]
        if "aggregation" in entry and entry["aggregation"] != agg:
            raise ConfigError(f"{where}: key 'metric_list' gives {name} aggregation {entry['aggregation']!r}; "
                              f"only {agg!r} is supported")
        if "higher_is_better" in entry and bool(entry["higher_is_better"]) != higher:
            raise ConfigError(f"{where}: key 'metric_list' gives {name} higher_is_better "
                              f"{entry['higher_is_better']!r}; it is {str(higher).lower()}")
        options = {k: v for k, v in entry.items() if k not in ("metric", "aggregation", "higher_is_better")}
        allowed = EXACT_MATCH_OPTIONS if name == "exact_match" and output_type == "generate_until" else ()
        for k, v in options.items():
            if k not in allowed:
                raise ConfigError(f"{where}: key 'metric_list' gives {name} option '{k}', which is not supported"
                                  + (f" (supported: {', '.join(allowed)})" if allowed else ""))
            ok = (isinstance(v, list) and all(isinstance(x, str) for x in v)) if k == "regexes_to_ignore" \
                else isinstance(v, bool)
            if not ok:
                raise ConfigError(f"{where}: key 'metric_list' gives {name} option '{k}' the value {v!r}; it takes "
                                  + ("a list of regular expressions" if k == "regexes_to_ignore" else "true or false"))
            for pattern in v if k == "regexes_to_ignore" else ():
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ConfigError(f"{where}: key 'metric_list' gives {name} the regular expression "
                                      f"{pattern!r}, which does not compile ({e})") from None
        out.append(MetricSpec(name, options))
    return tuple(out)
