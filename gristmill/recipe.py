"""The recipe: one YAML file, one section per stage, each section the owning component's config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
