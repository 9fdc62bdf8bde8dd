"""The recipe: one YAML file, one section per stage, each section the owning component's config.

The ``Recipe`` class is composed from the stage registry (``gristmill.stages.STAGES``), so a new stage's
section appears without editing this file. Loading a recipe imports config modules only: no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, create_model, field_validator, model_validator

from gristmill.core.config import Config, apply_overrides, read_recipe_yaml, validate
from gristmill.core.workspace import check_run_name
from gristmill.errors import ConfigError
from gristmill.serve.config import ServeConfig
from gristmill.stages import STAGES

MAX_SEED = 2**63 - 1


class RecipeBase(Config):
    """A whole run: raw sources to a served model."""

    name: str = "run"
    """Run name: outputs go to ``<runs_dir>/<name>/<stage>/``; one folder name (letters, digits, ``.``,
    ``_``, ``-``)."""
    runs_dir: str = Field("runs", min_length=1)
    """Folder that holds runs, relative to the working directory."""
    seed: int = Field(1337, ge=0, le=MAX_SEED)
    """One seed for the run; each stage derives its own randomness from it."""
    skip: list[str] = []
    """Stages this recipe does not run, e.g. ``[tokenize, train]`` to fine-tune a pretrained model without
    pre-training one (a stage that runs may not read a skipped one)."""

    @field_validator("skip")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        names = [s.name for s in STAGES]
        if unknown := [x for x in v if x not in names]:
            raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(names)}")
        return v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_run_name(v)

    @model_validator(mode="after")
    def _link_sections(self) -> RecipeBase:
        # prepare runs before evaluate, and must not keep training text that evaluate scores on: its
        # decontamination step reads the evaluate section's held-out and task files.
        prepare, evaluate = getattr(self, "prepare", None), getattr(self, "evaluate", None)
        if prepare is not None and evaluate is not None:
            prepare.link_evaluate(evaluate.heldout_files, evaluate.tasks)
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


Recipe = create_model(
    "Recipe",
    __base__=RecipeBase,
    __doc__=RecipeBase.__doc__,
    **{s.name: (s.config, Field(default_factory=s.config, description=s.config.__doc__)) for s in STAGES},
    serve=(ServeConfig, Field(default_factory=ServeConfig, description=ServeConfig.__doc__)),
)


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Any:
    """Read a recipe file or built-in recipe, apply dotted overrides, validate it (every error at once)."""
    data, origin = read_recipe_yaml(name_or_path)
    data = apply_overrides(data, overrides or [])
    return validate(Recipe, data, origin)


def check_recipe(recipe: Any, stages: list[str]) -> None:
    """Cross-section checks and optional extras of the stages that will run, all before any runs: every
    problem found is reported in one ConfigError."""
    problems = []
    for st in STAGES:
        if st.name not in stages:
            continue
        skipped = [d for d in st.inputs(getattr(recipe, st.name)) if d in recipe.skip and d not in stages]
        if skipped and not st.partial_inputs and st.name not in recipe.skip:
            problems.append(f"{st.name} reads {', '.join(skipped)}, which skip lists: take "
                            f"{', '.join(skipped)} out of skip, or skip {st.name} too")
        if st.check is not None:
            try:
                st.check(getattr(recipe, st.name), recipe)
            except ConfigError as e:
                problems.append(str(e))
    if problems:
        raise ConfigError("; ".join(problems))


def recipe_dict(recipe: Any) -> dict[str, Any]:
    return recipe.model_dump(mode="json")
