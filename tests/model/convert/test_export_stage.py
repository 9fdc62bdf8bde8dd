"""The export stage on a run folder: which model it picks, what it writes, the figures it records, the
card's own instructions run as written, and the mistakes it catches before anything runs."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from gristmill.core.workspace import write_json
from gristmill.errors import ConfigError, InputError
from gristmill.inference.sampling import SamplingParams
from gristmill.inference.stream import generate
from gristmill.model.config import ModelConfig
from gristmill.model.convert.config import ExportConfig
from gristmill.model.io import load_for_inference
from gristmill.stages.export import STAGE, check_config

pytest.importorskip("gguf")


def model_run(tmp_path: Path, tiny_model_dir: Path, *stages: str) -> Path:
    """A run folder in which each of ``stages`` finished with (a copy of) the tiny model."""
    run = tmp_path / "run"
    for s in stages:
        shutil.copytree(tiny_model_dir, run / s / "model")
        write_json(run / s / "manifest.json", {"stage": s, "outputs": {}, "stats": {"steps": 40}})
    return run


def run_card_snippets(export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run the card's Python examples as a reader would, in the export folder; what each prints."""
    card = (export_dir / "README.md").read_text(encoding="utf-8")
    printed = []
    monkeypatch.chdir(export_dir)
    for block in re.findall(r"```python\n(.*?)```", card, re.S):
        if "llama_cpp" in block and not _has("llama_cpp"):
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, "README.md", "exec"), {})
        printed.append(out.getvalue())
    return printed


def _has(module: str) -> bool:
    from gristmill.core.extras import available

    return available(module)


def test_exports_the_trained_model_with_a_card_that_works(stage, tiny_model_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    run = model_run(tmp_path, tiny_model_dir, "train")
    ctx = stage("export", upstream=("train",), run_dir=run)
    stats = STAGE.run(ctx, ExportConfig(gguf_dtype="f32", check_tokens=24, license="MIT"))

    out = run / "export"
    assert stats["model"] == "train/model" and stats["name"] == "run-train" and stats["softcap_dropped"] == 30.0
    assert set(stats["files"]) == {f"hf/{n}" for n in ("config.json", "generation_config.json", "model.safetensors",
                                                       "tokenizer.json", "tokenizer_config.json",
                                                       "special_tokens_map.json")} | {"model.gguf", "README.md"}
    assert all((out / name).stat().st_size == size for name, size in stats["files"].items())
    hf, gg = stats["hf"], stats["gguf"]
    assert hf["checked_with"] == "transformers" and hf["tokens"] == 24
    assert hf["max_abs_logit_diff"] < 1e-5 and hf["argmax_agreement"] == 1.0 and hf["uncapped_max_abs_logit_diff"] > 0
    assert gg["checked_with"] == ("llama.cpp" if _has("llama_cpp") else "gristmill import")
    assert gg["max_abs_logit_diff"] < 1e-2 and gg["argmax_agreement"] == 1.0 and gg["tensor_types"] == {"F32": 21}
    json.dumps(stats)  # the manifest must be able to hold it

    # the card's examples, run as written, print what Gristmill's own greedy decoding writes
    model, tok = load_for_inference(run / "train" / "model")
    expected = generate(model, tok, "Once upon a time", SamplingParams(max_new_tokens=32, temperature=0)).text
    printed = run_card_snippets(out, monkeypatch)
    assert printed and all(p == expected + "\n" for p in printed), (printed, expected)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "license: \"MIT\"" in card and "| GGUF file |" in card

    assert "## Export" in STAGE.report(SimpleNamespace(manifests={"export": {"stats": stats}}))
    lines = STAGE.summary({"stats": stats}, run)
    assert "hf/ + model.gguf (f32), README.md" in lines[0] and "max logit diff" in lines[1]


def test_prefers_the_fine_tuned_model_and_writes_only_what_is_asked(stage, tiny_model_dir: Path,
                                                                    tmp_path: Path) -> None:
    run = model_run(tmp_path, tiny_model_dir, "train", "finetune")
    cfg = ExportConfig(formats=["hf"], check_tokens=0, name="mill-chat")
    stats = STAGE.run(stage("export", upstream=("train",), run_dir=run), cfg)
    assert stats["model"] == "finetune/model" and stats["name"] == "mill-chat" and "gguf" not in stats
    assert "max_abs_logit_diff" not in stats["hf"] and not (run / "export" / "model.gguf").exists()
    tc = json.loads((run / "export" / "hf" / "tokenizer_config.json").read_text())
    assert tc["eos_token"] == "<|im_end|>"  # a chat model ends its turn with <|im_end|>

    shutil.rmtree(run / "export")
    stats = STAGE.run(stage("export", upstream=("train",), run_dir=run), cfg.model_copy(update={"model": "train"}))
    assert stats["model"] == "train/model"
    assert json.loads((run / "export" / "hf" / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"


def test_stage_errors_name_what_to_do(stage, tiny_model_dir: Path, tmp_path: Path) -> None:
    run = model_run(tmp_path, tiny_model_dir, "train")
    ctx = stage("export", upstream=("train",), run_dir=run)
    with pytest.raises(InputError, match=r"no finished model \(looked for .*base/model\); .* set export.model"):
        STAGE.run(ctx, ExportConfig(model="base"))
    with pytest.raises(InputError, match="set export.allow_softcap_drop: true"):
        STAGE.run(ctx, ExportConfig(allow_softcap_drop=False))
    assert STAGE.inputs(ExportConfig()) == () and STAGE.inputs(ExportConfig(model="base")) == ("base",)
    assert not STAGE.active(ExportConfig(formats=[])) and STAGE.active(ExportConfig())
    with pytest.raises(ValueError, match="formats.0"):
        ExportConfig(formats=["onnx"])


def test_check_catches_models_llama_cannot_express_before_anything_runs() -> None:
    def recipe(start_from: str = "train", **model) -> SimpleNamespace:
        return SimpleNamespace(train=SimpleNamespace(model=ModelConfig(**model)),
                               finetune=SimpleNamespace(start_from=start_from))

    with pytest.raises(ConfigError, match=r"train.model.qk_norm is true, .* export.formats: \[\] to skip export"):
        check_config(ExportConfig(), recipe(qk_norm=True))
    with pytest.raises(ConfigError, match="export.allow_softcap_drop is false"):
        check_config(ExportConfig(allow_softcap_drop=False), recipe())
    check_config(ExportConfig(), recipe())  # the default: soft-cap dropped, recorded in the card
    check_config(ExportConfig(formats=[]), recipe(qk_norm=True))  # export skipped
    check_config(ExportConfig(), recipe("base", qk_norm=True))  # the imported model is exported, not train's


def test_loading_the_stage_imports_nothing_heavy() -> None:
    """The registry imports every stage module, and a recipe holds ExportConfig: neither may pull in torch
    or the converters' libraries."""
    import subprocess
    import sys

    code = ("import sys, gristmill.stages.export, gristmill.model.convert.config, gristmill.model.convert.card; "
            "print(sorted(m for m in ('torch', 'transformers', 'gguf', 'llama_cpp', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
