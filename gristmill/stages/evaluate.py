"""evaluate: held-out loss, perplexity and bits per byte of the pre-trained model, plus samples.

The metrics over the whole validation split are the train stage's final evaluation (computed once, with
:func:`gristmill.eval.lm.evaluate_lm`'s definition); with ``evaluate.max_tokens`` the same function scores
that prefix. Samples come from fixed prompts with seeded sampling. Writes ``eval.json``.
"""

from __future__ import annotations

import time
from typing import Any

from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext, write_json
from gristmill.errors import InputError
from gristmill.eval.config import EvaluateConfig


def run(ctx: StageContext, cfg: EvaluateConfig) -> dict[str, Any]:
    import numpy as np

    from gristmill.eval.lm import evaluate_lm, prefix_bytes
    from gristmill.inference.sampling import SamplingParams
    from gristmill.inference.stream import generate
    from gristmill.model.io import load_for_inference
    from gristmill.runtime import autocast, resolve_device
    from gristmill.train.batches import load_tokens, read_meta

    device = resolve_device(cfg.device)
    model_dir = ctx.input_dir("train") / "model"
    model, tokenizer = load_for_inference(model_dir, device)
    tok_dir = ctx.input_dir("tokenize")
    meta = read_meta(tok_dir)
    tokens = load_tokens(tok_dir / "val.bin", meta["dtype"])
    n_bytes = int(meta["splits"]["val"]["bytes"])
    if len(tokens) < 1:
        raise InputError("the validation split has no tokens; make prepare's validation split larger "
                         "(prepare.val_fraction) and re-run")
    train_stats = ctx.input_manifest("train").get("stats") or {}
    capped = cfg.max_tokens is not None and cfg.max_tokens < len(tokens)
    t0 = time.time()
    if not capped and train_stats.get("val_tokens") == len(tokens) and train_stats.get("val_bits_per_byte"):
        metrics = {"loss": train_stats["val_loss"], "perplexity": train_stats["val_perplexity"],
                   "bits_per_byte": train_stats["val_bits_per_byte"], "tokens": len(tokens), "bytes": n_bytes}
        computed_by = "train stage's final evaluation"
    else:
        if capped:
            tokens = np.asarray(tokens[:cfg.max_tokens])
            n_bytes = max(1, prefix_bytes(tokens, lambda ids: tokenizer.decode(ids, skip_special_tokens=True)))
        ctx.log(f"[evaluate] scoring {len(tokens):,} validation tokens ({n_bytes:,} bytes) on {device}")
        metrics = evaluate_lm(model, tokens, n_bytes, batch_size=cfg.batch_size, eot_id=int(meta["eot_id"]),
                              device=device, autocast=lambda: autocast(device))
        computed_by = "evaluate stage"
    ctx.log(f"[evaluate] loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.2f}, bits per byte "
            f"{metrics['bits_per_byte']:.4f} over {metrics['tokens']:,} tokens ({computed_by}, {time.time() - t0:.1f}s)")

    samples = []
    for i, prompt in enumerate(cfg.prompts):
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_k=cfg.top_k or None, top_p=cfg.top_p, seed=ctx.seed + i)
        out = generate(model, tokenizer, prompt, params, truncate=True)
        samples.append({"prompt": prompt, "completion": out.text, "finish_reason": out.finish_reason,
                        "completion_tokens": out.completion_tokens})
        ctx.log(f"[evaluate] sample {i}: {prompt!r} -> {out.text[:80]!r}")

    from gristmill.eval.samples import chat_answers

    answers = chat_answers(model, tokenizer, cfg.chat_prompts, cfg.max_new_tokens) if cfg.max_new_tokens else []

    result = {
        "model": "train/model",
        "split": "val",
        **metrics,
        "capped": capped,
        "computed_by": computed_by,
        "sampling": {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                     "top_k": cfg.top_k, "top_p": cfg.top_p, "seed": ctx.seed},
        "samples": samples,
        "chat_answers": answers,
    }
    write_json(ctx.out_dir / "eval.json", result)
    return {**metrics, "capped": capped, "samples": len(samples)}


METRIC_NAMES = {"loss": "loss (nats/token)", "perplexity": "perplexity", "bits_per_byte": "bits per byte",
                "tokens": "tokens predicted", "bytes": "bytes"}


def report(rc: ReportContext) -> str:
    from gristmill.report.markdown import read_json_or_none, samples_section, table

    ev = read_json_or_none(rc.stage_dir("evaluate") / "eval.json")
    if not isinstance(ev, dict):
        return ""
    rows = [[METRIC_NAMES[k], ev[k]] for k in METRIC_NAMES if k in ev]
    note = " (capped: a prefix of the split)" if ev.get("capped") else " (the whole split)"
    return (f"## Evaluate\n\nThe pre-trained model on the validation text{note}.\n\n"
            + table(["metric", "value"], rows) + "\n\n" + samples_section(ev, "Samples", rc.options))


def summary(manifest: dict[str, Any], run_dir: Any) -> list[str]:
    s = manifest.get("stats") or {}
    if not s.get("capped"):
        return []  # the train stage's line already gives the whole split's numbers
    return [f"  pre-trained model bits per byte {s['bits_per_byte']:.3f} on the first {s['tokens']:,} "
            f"validation tokens (evaluate.max_tokens)"]


STAGE = Stage(
    name="evaluate",
    config=EvaluateConfig,
    needs=("train", "tokenize"),
    run=run,
    help="held-out loss, perplexity, bits per byte, samples",
    report=report,
    summary=summary,
)
