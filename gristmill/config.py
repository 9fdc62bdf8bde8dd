"""Typed configuration: the base class every component's config derives from, and recipe loading.

Each component owns its config class (``CollectConfig`` in ``gristmill.collect``, ``TrainConfig`` in
``gristmill.train`` ...), with defaults in code and a docstring per field. A recipe is YAML with one
section per stage; ``--set train.max_steps=100`` overrides any key. Unknown keys and wrong types are
errors that name the key.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from gristmill.errors import ConfigError

T = TypeVar("T", bound="Config")


class Config(BaseModel):
    """Base for every config: unknown keys are errors; field docstrings are the documentation."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line naming the first offending key, e.g. ``recipe x: train.max_steps: ...``."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        return f"{where}: unknown key '{key}' (check its spelling; see docs/recipes.md for the keys)"
    if e["type"] == "missing":
        return f"{where}: missing required key '{key}'"
    got = e.get("input")
    got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return f"{where}: {key}: {e['msg']}{got_s}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.max_steps=100`` -> (['train', 'max_steps'], 100); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.path=value, e.g. train.max_steps=100")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


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
