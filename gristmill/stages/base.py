"""base: import a pretrained model (a GGUF file or a Hugging Face folder) as this run's base model.

The weights are dequantised into Gristmill's own model and the tokenizer rebuilt, so every later stage
(fine-tuning, evaluation, serving, export) treats it like a model this run trained. Writes ``model/`` (a
model dir plus ``import.json``: source, sha256, chat template, special ids). A recipe without
``base.source`` skips the stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gristmill.core.extras import check
from gristmill.core.paths import resolve
from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext
from gristmill.errors import ConfigError, InputError
from gristmill.model.config import BaseModelConfig


def source_path(cfg: BaseModelConfig) -> Path:
    p = Path(resolve(cfg.source or ""))
    if not p.exists():
        raise InputError(f"base.source {cfg.source} does not exist ({p}); name a .gguf file or a Hugging Face "
                         f"model folder")
    return p


def _format(cfg: BaseModelConfig, path: Path) -> str:
    if cfg.format != "auto":
        return cfg.format
    return "hf" if path.is_dir() else "gguf"


def input_files(cfg: BaseModelConfig) -> list[Path]:
    """The files imported, hashed into the cache key (a folder: its config, weights and tokenizer files)."""
    if not cfg.source:
        return []
    p = source_path(cfg)
    return sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p]


def check_config(cfg: BaseModelConfig, recipe: Any) -> None:
    if cfg.source:
        path = source_path(cfg)
        if _format(cfg, path) == "gguf":
            check("gguf", "convert", "base.source (a GGUF file)")
    finetune = getattr(recipe, "finetune", None)
    if finetune is not None and finetune.start_from == "base" and not cfg.source:
        raise ConfigError("finetune.start_from is base but base.source is not set; name the pretrained model "
                          "to import (a .gguf file or a Hugging Face folder) or set finetune.start_from: train")


def run(ctx: StageContext, cfg: BaseModelConfig) -> dict[str, Any]:
    from gristmill.model.convert.imported import save_imported

    path = source_path(cfg)
    fmt = _format(cfg, path)
    ctx.log(f"[base] importing {path.name} ({fmt})")
    if fmt == "gguf":
        from gristmill.model.convert.gguf import import_gguf

        model, tokenizer, info = import_gguf(path)
    else:
        from gristmill.model.convert.hf import import_hf

        model, tokenizer, info = import_hf(path)
    save_imported(ctx.out_dir / "model", model, tokenizer, info)
    c = model.config
    ctx.log(f"[base] {model.num_params():,} parameters, {c.n_layer} layers x {c.n_embd}, vocabulary "
            f"{c.vocab_size:,}, context {c.block_size:,}")
    return {"source": path.name, "format": fmt, "parameters": model.num_params(), "n_layer": c.n_layer,
            "n_embd": c.n_embd, "vocab_size": c.vocab_size, "block_size": c.block_size,
            "name": info.get("name"), "sha256": info.get("sha256")}


def report(rc: ReportContext) -> str:
    m = rc.manifests.get("base")
    if not m:
        return ""
    s = m.get("stats") or {}
    return (f"## Base model\n\nImported `{s.get('source')}` ({s.get('format')}): {s.get('name') or 'a Llama model'}, "
            f"{s.get('parameters', 0):,} parameters, {s.get('n_layer')} layers x {s.get('n_embd')}, vocabulary "
            f"{s.get('vocab_size', 0):,}, context {s.get('block_size', 0):,} tokens.\n")


def summary(manifest: dict[str, Any], run_dir: Path) -> list[str]:
    s = manifest.get("stats") or {}
    return [f"  base model        imported {s.get('source')} ({s.get('parameters', 0) / 1e6:.0f}M parameters)"]


STAGE = Stage(
    name="base",
    config=BaseModelConfig,
    needs=(),
    run=run,
    help="import a pretrained model (GGUF or Hugging Face folder) as the run's base model",
    external_inputs=input_files,
    enabled=lambda cfg: bool(cfg.source),
    check=check_config,
    report=report,
    summary=summary,
)
