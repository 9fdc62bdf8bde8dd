"""export: the run's model as files other tools load, with a model card.

Reads the newest model of the run (``finetune/model``, else ``train/model``, else the imported
``base/model``; ``export.model`` picks one) and writes, per ``export.formats``, ``hf/`` (a transformers
``LlamaForCausalLM`` folder) and ``model.gguf`` (llama.cpp), then ``README.md``, the model card built from
every stage's manifest. A few tokens are scored by Gristmill and by the exported files (with transformers
and llama-cpp-python when installed) and the largest logit difference is recorded, in the stats and
the card. The libraries are in ``gristmill.model.convert`` (``export_hf``, ``export_gguf``, ``card``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext
from gristmill.errors import ConfigError, InputError
from gristmill.model.convert.config import ExportConfig

MODEL_STAGES = ("finetune", "train", "base")
"""Stages whose ``model/`` can be exported, newest first (the order ``export.model: auto`` tries them)."""


def model_stage(run_dir: Path, which: str) -> str:
    """The stage whose model to export: ``which``, or for ``auto`` the first of :data:`MODEL_STAGES` that
    finished with a model; InputError naming what to run if there is none."""
    from gristmill.core.workspace import load_manifest
    from gristmill.model.io import is_model_dir

    candidates = MODEL_STAGES if which == "auto" else (which,)
    for name in candidates:
        if load_manifest(run_dir / name) is not None and is_model_dir(run_dir / name / "model"):
            return name
    wanted = " or ".join(f"{run_dir / s / 'model'}" for s in candidates)
    raise InputError(f"export found no finished model (looked for {wanted}); run `gristmill run` for this recipe "
                     f"first, or set export.model to a stage that has run")


def run(ctx: StageContext, cfg: ExportConfig) -> dict[str, Any]:
    from gristmill.core.workspace import write_text
    from gristmill.model.convert.card import model_card, read_manifests
    from gristmill.model.convert.export_gguf import export_gguf
    from gristmill.model.convert.export_hf import export_hf
    from gristmill.model.convert.exported import load_source, uncapped_note
    from gristmill.model.convert.parity import check_gguf, check_hf, probe_ids

    stage = model_stage(ctx.run_dir, cfg.model)
    model_dir = ctx.input_dir(stage) / "model"
    default_name = None if stage == "base" else f"{ctx.run_dir.name}-{stage}"  # base: the imported name
    source = load_source(model_dir, chat=stage == "finetune", allow_softcap_drop=cfg.allow_softcap_drop,
                         name=cfg.name or default_name)
    c = source.config
    ctx.log(f"[export] {stage}/model: {source.model.num_params():,} parameters, {c.n_layer} layers x {c.n_embd}"
            + (f"; logit soft-cap {source.dropped_softcap:g} dropped (Llama has none)" if source.dropped_softcap
               else ""))
    ids = probe_ids(source, cfg.check_tokens) if cfg.check_tokens else None
    out = ctx.out_dir
    export: dict[str, Any] = {"model": f"{stage}/model", "name": source.name, "parameters": source.model.num_params(),
                              "softcap_dropped": source.dropped_softcap, "files": {}}

    formats = list(dict.fromkeys(cfg.formats))
    if "hf" in formats:
        files = export_hf(source, out / "hf", dtype=cfg.hf_dtype)
        export["files"].update({f"hf/{name}": size for name, size in files.items()})
        export["hf"] = {"dtype": cfg.hf_dtype, **(check_hf(source, out / "hf", ids) if ids else {})}
        ctx.log(f"[export] hf/ ({_mb(sum(files.values()))}){_check_line(export['hf'])}")
    if "gguf" in formats:
        description = f"Exported by Gristmill from {ctx.run_dir.name}/{stage}/model."
        if source.dropped_softcap:
            description += " " + uncapped_note(source.dropped_softcap)
        info = export_gguf(source, out / "model.gguf", dtype=cfg.gguf_dtype, license=cfg.license,
                           description=description)
        export["files"]["model.gguf"] = info["bytes"]
        export["gguf"] = {"dtype": cfg.gguf_dtype, "tensor_types": info["tensor_types"],
                          **(check_gguf(source, out / "model.gguf", ids, quantized=cfg.gguf_dtype == "q8_0")
                             if ids else {})}
        ctx.log(f"[export] model.gguf ({cfg.gguf_dtype}, {_mb(info['bytes'])}){_check_line(export['gguf'])}")

    card = model_card(source, manifests=read_manifests(ctx.run_dir), model_stage=stage, run_name=ctx.run_dir.name,
                      export=export, license=cfg.license, intended_use=cfg.intended_use,
                      limitations=cfg.limitations)
    write_text(out / "README.md", card)
    export["files"]["README.md"] = (out / "README.md").stat().st_size
    return export


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _check_line(c: dict[str, Any]) -> str:
    if "max_abs_logit_diff" not in c:
        return ""
    return (f"; {c['tokens']} tokens read by {c['checked_with']}: max logit diff {c['max_abs_logit_diff']:.2e}, "
            f"same argmax at {c['argmax_agreement']:.0%} of positions")


def reads(cfg: ExportConfig) -> tuple[str, ...]:
    """The model stage that must have finished: ``auto`` takes whichever finished (``model_stage`` says
    what to run when none has), so a recipe that skips pre-training still exports."""
    return () if cfg.model == "auto" else (cfg.model,)


def check_config(cfg: ExportConfig, recipe: Any) -> None:
    """Before anything runs: the gguf package for GGUF, and a trained model Llama can express."""
    from gristmill.core.extras import check

    if not cfg.formats:
        return
    if "gguf" in cfg.formats:
        check("gguf", "convert", "export.formats: gguf")
    train = getattr(recipe, "train", None)
    finetune = getattr(recipe, "finetune", None)
    from_base = cfg.model == "base" or (cfg.model != "train" and getattr(finetune, "start_from", "train") == "base")
    if train is None or from_base:
        return
    if train.model.qk_norm:
        raise ConfigError("train.model.qk_norm is true, which Llama cannot express, so the export stage would fail; "
                          "set train.model.qk_norm: false, or export.formats: [] to skip export")
    if train.model.logit_softcap and not cfg.allow_softcap_drop:
        raise ConfigError(f"train.model.logit_softcap is {train.model.logit_softcap:g}, which Llama cannot express, "
                          f"and export.allow_softcap_drop is false; allow exporting uncapped logits, or set "
                          f"train.model.logit_softcap: null")


def report(rc: ReportContext) -> str:
    from gristmill.report.markdown import table

    m = rc.manifests.get("export")
    if not m:
        return ""
    s = m.get("stats") or {}
    rows = [[f"`export/{name}`", f"{size:,}"] for name, size in (s.get("files") or {}).items()]
    text = (f"## Export\n\n`{s.get('model')}` as files other tools load, with its model card "
            f"(`export/README.md`).\n\n" + table(["file", "bytes"], rows) + "\n")
    checks = [[label, c.get("checked_with"), c.get("tokens"), c.get("max_abs_logit_diff"), c.get("argmax_agreement")]
              for key, label in (("hf", "transformers folder"), ("gguf", f"GGUF ({(s.get('gguf') or {}).get('dtype')})"))
              if isinstance(c := s.get(key), dict) and "max_abs_logit_diff" in c]
    if checks:
        text += ("\nGristmill's logits against the exported files' on the same tokens"
                 + (" (soft-cap applied to the exported logits, which lack it)" if s.get("softcap_dropped") else "")
                 + ":\n\n" + table(["export", "read by", "tokens", "max logit diff", "same argmax"], checks) + "\n")
    return text


def summary(manifest: dict[str, Any], run_dir: Path) -> list[str]:
    s = manifest.get("stats") or {}
    written = [n for n in ("hf", "gguf") if n in s]
    what = " + ".join({"hf": "hf/", "gguf": f"model.gguf ({(s.get('gguf') or {}).get('dtype')})"}[n] for n in written)
    lines = [f"  export            {run_dir / 'export'}/: {what}, README.md"]
    for n in written:
        c = s[n]
        if "max_abs_logit_diff" in c:
            lines.append(f"                    {n}: max logit diff {c['max_abs_logit_diff']:.1e} vs Gristmill "
                         f"({c['checked_with']}), same next token at {c['argmax_agreement']:.0%} of {c['tokens']} "
                         f"positions")
    return lines


STAGE = Stage(
    name="export",
    config=ExportConfig,
    needs=("collect", "prepare", "synth", "tokenize", "train", "evaluate", "base", "finetune"),
    reads=reads,
    run=run,
    help="write the model as a transformers folder and a GGUF file, with a model card",
    enabled=lambda cfg: bool(cfg.formats),
    check=check_config,
    report=report,
    summary=summary,
)
