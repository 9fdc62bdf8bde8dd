"""Recipes: built-ins parse, overrides apply, and mistakes get one line that names the key."""

import subprocess
import sys

import pytest

from gristmill.config import apply_overrides, builtin_recipes, parse_override
from gristmill.errors import ConfigError
from gristmill.recipe import Recipe, load_recipe


def test_every_builtin_recipe_parses():
    names = builtin_recipes()
    assert {"default", "quick"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert isinstance(recipe, Recipe)
        assert recipe.name == name


def test_override_sets_nested_keys_with_yaml_types():
    assert parse_override("train.max_steps=100") == (["train", "max_steps"], 100)
    assert parse_override("prepare.val_fraction=0.5") == (["prepare", "val_fraction"], 0.5)
    assert parse_override("name=my run") == (["name"], "my run")
    data = apply_overrides({"train": {"a": 1}}, ["train.b=true", "seed=7"])
    assert data == {"train": {"a": 1, "b": True}, "seed": 7}


def test_override_changes_the_validated_recipe():
    recipe = load_recipe("quick", ["seed=99", "name=other"])
    assert recipe.seed == 99 and recipe.name == "other"
    assert str(recipe.run_dir).endswith("other")


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.max_stepz'"):
        load_recipe("quick", ["train.max_stepz=3"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"seed: .*integer.*'abc'"):
        load_recipe("quick", ["seed=abc"])


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_recipe("quick", ["train.max_steps"])


def test_unknown_recipe_lists_the_builtins():
    with pytest.raises(ConfigError, match="built-in: .*default"):
        load_recipe("no-such-recipe")


def test_invalid_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_recipe(str(bad))


def test_cli_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gristmill", "show", "quick", "--set", "train.nope=1"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown key 'train.nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
