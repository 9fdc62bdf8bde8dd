"""The recipe: one YAML file, one section per stage, each section the owning component's config."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from gristmill.collect import CollectConfig
from gristmill.config import Config, apply_overrides, read_recipe_yaml, validate
from gristmill.evaluate import EvaluateConfig
from gristmill.finetune import FinetuneConfig
from gristmill.prepare import PrepareConfig
from gristmill.report import ReportConfig
from gristmill.serve import ServeConfig
from gristmill.synth import SynthConfig
from gristmill.tokenize import TokenizeConfig
from gristmill.train import TrainConfig


class Recipe(Config):
    """A whole run: raw sources to a served model."""

    name: str = "run"
    """Run name: outputs go to ``<runs_dir>/<name>/<stage>/``."""
    runs_dir: str = "runs"
    """Folder that holds runs, relative to the working directory."""
    seed: int = 1337
    """One seed for the run; each stage derives its own randomness from it."""
    collect: CollectConfig = CollectConfig()
    prepare: PrepareConfig = PrepareConfig()
    synth: SynthConfig = SynthConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    report: ReportConfig = ReportConfig()
    serve: ServeConfig = ServeConfig()

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file or built-in recipe, apply dotted overrides, validate it."""
    data, origin = read_recipe_yaml(name_or_path)
    data = apply_overrides(data, overrides or [])
    return validate(Recipe, data, origin)


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    return recipe.model_dump(mode="json")


def _type_name(annotation: Any) -> str:
    """A short, readable type: ``int | None``, ``list[str]``, ``"adamw" | "muon"``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _config_class(annotation: Any) -> type[Config] | None:
    """The Config class a field holds (directly, or as the items of a list), if any."""
    for cand in (annotation, *typing.get_args(annotation)):
        if isinstance(cand, type) and issubclass(cand, Config):
            return cand
    return None


def _reference_rows(cls: type[Config], prefix: str) -> tuple[list[str], list[tuple[str, type[Config]]]]:
    rows, nested = [], []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        sub = _config_class(field.annotation)
        if sub is not None:
            is_list = sub is not field.annotation
            nested.append((f"{key}[]" if is_list else key, sub))
            if not is_list:
                continue
        if field.is_required():
            default_s = "required"
        else:
            default_s = f"`{json.dumps(to_jsonable_python(field.get_default(call_default_factory=True)))}`"
        doc = " ".join((field.description or "").split()).replace("|", "\\|")
        type_s = _type_name(field.annotation).replace("|", "\\|")
        rows.append(f"| `{key}` | {type_s} | {default_s} | {doc} |")
    return rows, nested


def recipe_reference() -> str:
    """Every recipe key as Markdown tables (one per section), made from the config classes themselves.

    ``docs/recipes.md`` embeds this text; a test keeps the two in step.
    """
    out: list[str] = []
    todo: list[tuple[str, type[Config]]] = [("", Recipe)]
    while todo:
        prefix, cls = todo.pop(0)
        rows, nested = _reference_rows(cls, f"{prefix}." if prefix else "")
        title = f"`{prefix}`" if prefix else "top level"
        doc = " ".join((cls.__doc__ or "").split())
        out += [f"### {title}", "", doc, "", "| key | type | default | what it does |", "|---|---|---|---|",
                *rows, ""]
        todo = nested + todo  # depth first: a section's sub-sections follow it
    return "\n".join(out).rstrip() + "\n"
