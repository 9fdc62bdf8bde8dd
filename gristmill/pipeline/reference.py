"""Every recipe key as Markdown, made from the config classes themselves (``gristmill keys``).

``docs/recipes.md`` embeds this text; a test keeps the two in step.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic_core import to_jsonable_python

from gristmill.core.config import Config
from gristmill.pipeline.recipe import Recipe


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


def _union_members(annotation: Any) -> list[type[Config]]:
    """The config classes of a tagged union (``list[Annotated[A | B, Discriminator]]``), else []."""
    out: list[type[Config]] = []
    stack = list(typing.get_args(annotation))
    while stack:
        a = stack.pop(0)
        if isinstance(a, type) and issubclass(a, Config):
            out.append(a)
        else:
            stack[:0] = list(typing.get_args(a))
    return out if len(out) > 1 else []


def _reference_rows(cls: type[Config], prefix: str) -> tuple[list[str], list[tuple[str, type[Config]]]]:
    rows, nested = [], []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        members = _union_members(field.annotation)
        if members:
            for m in members:
                tag = typing.get_args(m.model_fields["type"].annotation)[0]
                nested.append((f"{key}[type={tag}]", m))
        sub = None if members else _config_class(field.annotation)
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
        type_s = ("list[" + " \\| ".join(f'{{type: "{typing.get_args(m.model_fields["type"].annotation)[0]}"}}'
                                           for m in members) + "]") if members else \
            _type_name(field.annotation).replace("|", "\\|")
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
