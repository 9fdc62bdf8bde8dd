"""Typed configuration: the base class every component's config derives from, and recipe loading.

Each component owns its config class in a torch-free ``config.py`` (``CollectConfig`` in
``gristmill.data.config``, ``TrainConfig`` in ``gristmill.train.config`` ...), with defaults and bounds in
code and a docstring per field. A recipe is YAML with one section per stage; ``--set
train.max_steps=100`` overrides any key. Unknown keys, wrong types and values out of bounds are errors
that name the key; every error in a recipe is reported at once, on one line.
"""

from __future__ import annotations

import functools
import operator
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Tag, ValidationError

from gristmill.errors import ConfigError

T = TypeVar("T", bound="Config")


class Config(BaseModel):
    """Base for every config: unknown keys are errors; field docstrings are the documentation."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


_UNION_TAGS: set[str] = set()
"""The ``type`` values of every tagged union: pydantic puts them in error locations; we leave them out."""


def tagged_union(*classes: type[Config], default: str | None = None) -> Any:
    """A list item type that is one of ``classes``, chosen by its ``type`` key (each class declares
    ``type: Literal["name"]``); an item without ``type`` is ``default`` (or an error if None)."""
    tags = {typing.get_args(c.model_fields["type"].annotation)[0]: c for c in classes}
    _UNION_TAGS.update(tags)

    def pick(v: Any) -> str | None:
        t = v.get("type", default) if isinstance(v, dict) else getattr(v, "type", default)
        return t if t in tags else None

    members = [Annotated[c, Tag(t)] for t, c in tags.items()]
    return Annotated[functools.reduce(operator.or_, members), Discriminator(
        pick, custom_error_type="unknown_type",
        custom_error_message=f"unknown or missing type; use one of: {', '.join(tags)}")]


def _describe_error(e: dict[str, Any]) -> str:
    loc = [p for i, p in enumerate(e["loc"])
           if not (isinstance(p, str) and p in _UNION_TAGS and i and isinstance(e["loc"][i - 1], int))]
    key = ".".join(str(p) for p in loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if e["type"] == "missing":
        return f"missing required key '{key}'"
    got = e.get("input")
    got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{key}: {msg}{got_s}"


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line naming every offending key, e.g. ``recipe x: seed: ...; train.max_steps: ...``.

    A discriminated union reports a failure once per member it tried; only the member the ``type``
    selected (or the union itself) is kept, so a mistake is named once.
    """
    seen: list[str] = []
    for e in err.errors():
        text = _describe_error(e)
        if text not in seen:
            seen.append(text)
    hint = " (check the spelling; `gristmill keys` lists every key)" if any(
        e["type"] == "extra_forbidden" for e in err.errors()) else ""
    return f"{where}: " + "; ".join(seen) + hint


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.max_steps=100`` -> (['train', 'max_steps'], 100); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.path=value, e.g. train.max_steps=100")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p.strip() for p in parts):
        raise ConfigError(f"override '{item}' has an empty key part; write it as section.key=value, "
                          f"e.g. train.max_steps=100")
    parts = [p.strip() for p in parts]
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (the dotted keys overrides use); lists, scalars and empty dicts are leaves."""
    if not isinstance(d, dict):
        return {prefix or "value": d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (copying what it changes)."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        parts, value = parse_override(item)
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{p}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def builtin_recipes() -> list[str]:
    root = resources.files("gristmill") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def read_recipe_yaml(name_or_path: str) -> tuple[dict[str, Any], str]:
    """Load the raw YAML of a recipe file, or of a built-in recipe by name. Returns (data, origin)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"recipe file {path} does not exist")
        text, origin = path.read_text(encoding="utf-8"), str(path)
    else:
        res = resources.files("gristmill") / "recipes" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(
                f"no recipe file or built-in recipe named '{name_or_path}' "
                f"(built-in: {', '.join(builtin_recipes())})"
            )
        text, origin = res.read_text(encoding="utf-8"), f"built-in recipe '{name_or_path}'"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{origin} is not valid YAML{at}: {getattr(e, 'problem', e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a mapping of stage sections, not {type(data).__name__}")
    return data, origin


def validate(cls: type[T], data: dict[str, Any], where: str) -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None
