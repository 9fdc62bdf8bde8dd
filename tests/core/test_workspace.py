"""The run workspace: safe run names, output checks before trusting a cache, no secrets on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gristmill.core.workspace import (
    check_run_name,
    redact_argv,
    verify_model_files,
    verify_outputs,
    write_json,
    write_manifest,
)
from gristmill.errors import InputError


@pytest.mark.parametrize("name", ["quick", "my-run_2", "v1.0", "A"])
def test_a_run_name_is_one_folder_name(name: str) -> None:
    assert check_run_name(name) == name


@pytest.mark.parametrize("name", ["../victim", "/etc", "", ".", "..", "a/b", ".hidden", "-x", "a\\b", "x" * 101])
def test_names_that_leave_runs_dir_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="one folder name"):
        check_run_name(name)


def test_secrets_are_redacted_from_the_recorded_command_line() -> None:
    argv = ["gristmill", "run", "quick", "--set", "serve.api_key=sekrit", "--set", "train.max_steps=3",
            "--api-key", "sekrit2", "--set", "x.password=p"]
    out = redact_argv(argv)
    assert "sekrit" not in " ".join(out) and out[-1] == "x.password=***" and out[-2] != "sekrit2"
    assert "train.max_steps=3" in out and "serve.api_key=***" in out


def test_manifest_outputs_are_checked_byte_for_byte(tmp_path: Path) -> None:
    stage = tmp_path / "run" / "train"
    (stage / "model").mkdir(parents=True)
    (stage / "model" / "model.safetensors").write_bytes(b"weights" * 100)
    write_json(stage / "model" / "config.json", {"n_layer": 1})
    m = write_manifest(stage, stage="train", recipe="r", fingerprint="f", config={}, inputs={}, stats={},
                       started=0.0)
    assert verify_outputs(stage, m) == []
    verify_model_files(stage / "model")  # intact: no error
    raw = bytearray((stage / "model" / "model.safetensors").read_bytes())
    raw[10:74] = bytes(64)
    (stage / "model" / "model.safetensors").write_bytes(bytes(raw))  # same size, other bytes
    assert verify_outputs(stage, m) == ["model/model.safetensors"]
    with pytest.raises(InputError, match=r"model\.safetensors does not match the sha256 .* --force train"):
        verify_model_files(stage / "model")
    (stage / "model" / "config.json").unlink()
    assert set(verify_outputs(stage, json.loads((stage / "manifest.json").read_text()))) == {
        "model/model.safetensors", "model/config.json"}
