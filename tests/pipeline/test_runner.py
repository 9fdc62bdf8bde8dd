"""The runner and the command line under misuse: unsafe names, corrupted outputs, values that would crash
later, empty recipes and sources, secrets; and the light start-up of the commands that only read recipes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gristmill.core.config import parse_override
from gristmill.errors import ConfigError
from gristmill.formats.document import read_quarantine
from gristmill.pipeline.recipe import load_recipe


def gristmill(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gristmill", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error line (progress lines of stages that ran before it may precede it)."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gristmill: error: "), proc.stderr
    return last


def small_recipe(tmp_path: Path, texts: dict[str, str], **extra) -> Path:
    folder = tmp_path / "texts"
    folder.mkdir(exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    recipe = {"name": "small", "collect": {"sources": [{"name": "notes", "path": str(folder)}]}, **extra}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("name", ["../victim", "/tmp/abs", "..", ""])
def test_a_run_name_cannot_escape_runs_dir(tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim" / "collect"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("keep me")
    err = one_line_error(gristmill("collect", "quick", "--set", f"name={name}", cwd=tmp_path / "victim"))
    assert "name" in err and "one folder name" in err
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "victim" / "runs").exists()


def test_every_bad_value_is_reported_at_once_before_anything_runs() -> None:
    with pytest.raises(ConfigError) as e:
        load_recipe("quick", ["seed=-1", "train.model.block_size=0", "train.model.dropout=1.5"])
    msg = str(e.value)
    for key in ("seed", "train.model.block_size", "train.model.dropout"):
        assert key in msg
    assert "\n" not in msg


def test_an_empty_key_part_in_an_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="empty key part"):
        parse_override("train..max_steps=3")
    with pytest.raises(ConfigError, match="empty key part"):
        load_recipe("quick", [".seed=3"])


def test_an_empty_recipe_fails_without_writing(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("{}\n")
    err = one_line_error(gristmill("run", "empty.yaml", cwd=tmp_path))
    assert "collect.sources is empty" in err
    assert not (tmp_path / "runs").exists()


def test_a_source_that_yields_no_documents_fails_at_collect_with_its_reasons(tmp_path: Path) -> None:
    recipe = small_recipe(tmp_path, {"scan.pdf": "%PDF-1.4\n", "photo.png": "not text\n"})
    os.symlink(tmp_path / "texts" / "gone", tmp_path / "texts" / "dangling.txt")
    err = one_line_error(gristmill("run", str(recipe), cwd=tmp_path))
    assert "collect source 'notes'" in err and "0 documents" in err
    assert "unsupported_extension 2" in err and "broken_symlink 1" in err
    assert not (tmp_path / "runs" / "small" / "prepare").exists()


def test_a_broken_link_beside_good_files_is_quarantined_with_its_reason(tmp_path: Path) -> None:
    from gristmill.core.workspace import StageContext
    from gristmill.data.config import CollectConfig
    from gristmill.stages.collect import run as run_collect

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "good.txt").write_text("A real document.\n")
    os.symlink(folder / "nowhere.txt", folder / "bad.txt")
    ctx = StageContext(run_dir=tmp_path / "run", stage="collect", seed=1, log=lambda m: None)
    ctx.out_dir.mkdir(parents=True)
    stats = run_collect(ctx, CollectConfig.model_validate({"sources": [{"name": "n", "path": str(folder)}]}))
    assert stats["documents"] == 1 and stats["sources"]["n"]["quarantined"] == {"broken_symlink": 1}
    q = list(read_quarantine(ctx.out_dir))
    assert q[0]["reason"] == "broken_symlink" and "does not exist" in q[0]["document"]["meta"]["detail"]


def test_a_corrupted_output_is_named_and_its_stage_runs_again(tmp_path: Path) -> None:
    recipe = small_recipe(tmp_path, {"a.txt": "One document of text.\n", "b.txt": "Another document.\n"})
    first = gristmill("collect", str(recipe), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    docs = tmp_path / "runs" / "small" / "collect" / "documents" / "00000.parquet"
    good = docs.read_bytes()
    docs.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    again = gristmill("collect", str(recipe), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "documents/00000.parquet changed since the stage wrote it" in again.stderr
    assert docs.read_bytes() == good  # the shard is made again, byte for byte
    cached = gristmill("collect", str(recipe), cwd=tmp_path)
    assert "up to date, skipped" in cached.stderr


def test_secrets_stay_out_of_recipes_and_manifests(tmp_path: Path) -> None:
    for cmd in ("show", "run"):
        err = one_line_error(gristmill(cmd, "quick", "--set", "serve.api_key=sekrit", cwd=tmp_path))
        assert "GRISTMILL_API_KEY" in err and "sekrit" not in err
    assert not (tmp_path / "runs").exists()


def test_show_prints_only_the_keys_of_each_source_type(tmp_path: Path) -> None:
    out = gristmill("show", "default", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    sources = yaml.safe_load(out.stdout)["collect"]["sources"]
    files = [s for s in sources if s["type"] == "files"]
    wiki = [s for s in sources if s["type"] == "mediawiki"]
    assert files and wiki and "skip_sections" not in files[0] and "skip_sections" in wiki[0]


@pytest.mark.parametrize("args", [["--help"], ["recipes"], ["show", "quick"], ["keys"]])
def test_commands_that_read_recipes_import_no_heavy_library(tmp_path: Path, args: list[str]) -> None:
    probe = ("import sys, runpy; sys.argv = ['gristmill', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('gristmill', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "heavy = [m for m in ('torch', 'tokenizers', 'fastapi', 'numpy', 'mwparserfromhell') if m in sys.modules]\n"
             "print('HEAVY', heavy, file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", probe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in p.stderr, p.stderr[-2000:]


def test_loading_a_recipe_does_not_import_torch() -> None:
    code = ("import sys; from gristmill.pipeline.recipe import load_recipe; load_recipe('default'); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_commands_set_a_short_openmp_spin_before_torch_loads_unless_the_user_set_one(tmp_path: Path) -> None:
    probe = ("import os, sys, runpy; sys.argv = ['gristmill', 'recipes']\n"
             "try:\n    runpy.run_module('gristmill', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "import torch\nprint('SPIN', os.environ.get('GOMP_SPINCOUNT'), file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    p = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert "SPIN 10000" in p.stderr, p.stderr[-2000:]
    p = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={**env, "GOMP_SPINCOUNT": "77"})
    assert "SPIN 77" in p.stderr, p.stderr[-2000:]
