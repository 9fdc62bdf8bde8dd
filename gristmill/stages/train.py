"""train: pre-train the transformer on the tokenize stage's token files.

Reads ``tokenize/{train.bin, val.bin, meta.json, tokenizer.json}``, runs ``fit`` and writes ``model/``
(the model directory), ``checkpoints/`` and ``metrics.jsonl``. Under torchrun every rank runs it; only
rank 0 writes. Its final evaluation over the whole validation split is the base model's held-out loss
and bits per byte (the evaluate stage reuses it rather than computing it again).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext
from gristmill.errors import InputError
from gristmill.train.config import TrainConfig


def run(ctx: StageContext, cfg: TrainConfig) -> dict[str, Any]:
    """Pre-train on ``tokenize``'s output; returns the stats recorded in the stage manifest."""
    from gristmill.eval.lm import lm_metrics
    from gristmill.model.gpt import GPT
    from gristmill.model.io import save_model
    from gristmill.runtime import setup_runtime
    from gristmill.train.batches import RandomWindows, TokenEvalData, load_tokens, read_meta
    from gristmill.train.loop import fit

    t_start = time.monotonic()
    tok_dir = ctx.input_dir("tokenize")
    meta = read_meta(tok_dir)
    tokenizer = tok_dir / "tokenizer.json"
    if not tokenizer.is_file():
        raise InputError(f"{tokenizer} is missing: re-run `gristmill tokenize`")
    train_tokens = load_tokens(tok_dir / "train.bin", meta["dtype"])
    val_tokens = load_tokens(tok_dir / "val.bin", meta["dtype"])
    if len(val_tokens) == 0:
        raise InputError(f"{tok_dir / 'val.bin'} is empty: the prepare stage must leave some validation text")

    rt = setup_runtime(cfg.device, cfg.compile, cfg.threads, ctx.seed, cfg.precision)
    mcfg = cfg.model.model_copy(update={"vocab_size": int(meta["vocab_size"])})
    model = GPT(mcfg)
    block = mcfg.block_size
    n_train_tokens = len(train_tokens)  # as tokenize wrote them, before any canary
    if cfg.canaries.count:
        train_tokens = _plant_canaries(ctx, cfg, train_tokens, tokenizer, int(meta["eot_id"]), rt.dist.is_main)
    train_data = RandomWindows(train_tokens, block, cfg.batch_size, seed=ctx.seed, rank=rt.dist.rank,
                               world=rt.dist.world_size)
    val_data = TokenEvalData(val_tokens, block, cfg.eval_batch_size, int(meta["eot_id"]), rt.dist.rank,
                             rt.dist.world_size)
    if rt.dist.is_main:
        ctx.log(f"[train] {model.num_params():,} parameters; {n_train_tokens:,} train / {len(val_tokens):,} "
                f"val tokens; device {rt.device} ({rt.dtype_name}), {rt.dist.world_size} process(es), "
                f"compile {'on' if rt.compile else 'off'}")

    res = fit(model, cfg, rt, train_data, val_data, ctx.out_dir, ctx.fingerprint, log=ctx.log,
              tokens_per_step=cfg.batch_size * block, start_time=t_start, run_name=ctx.run_dir.name,
              params=cfg.model_dump(mode="json"), dp_records=len(train_tokens) // block)

    if rt.dist.is_main:
        save_model(ctx.out_dir / "model", res.model, tokenizer)
    val_bytes = int(meta["splits"]["val"]["bytes"])
    whole = res.val_tokens == len(val_tokens)
    val = lm_metrics(res.val_nats, res.val_tokens, val_bytes) if whole else None
    st = res.state
    curve_tokens = min(cfg.eval_tokens or len(val_tokens), len(val_tokens))

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 5)

    return {
        "parameters": res.model.num_params(),
        "steps": st.step,
        "max_steps": cfg.max_steps,
        "stopped_by": st.stopped_by,
        "tokens_seen": st.tokens_seen,
        "tokens_per_s": round(res.tokens_per_s, 1),
        "train_loss": r(res.train_loss),
        # the whole validation split: the base model's held-out metrics
        "val_loss": r(res.val_loss),
        "val_perplexity": None if val is None else r(val["perplexity"]),
        "val_bits_per_byte": None if val is None else r(val["bits_per_byte"]),
        "val_tokens": res.val_tokens,
        "val_bytes": val_bytes,
        # the curve's token set (the first eval_tokens tokens of the split), labelled as such
        "curve_val_tokens": curve_tokens,
        "curve_val_loss_final": r(res.curve_val_loss),
        "curve_val_loss_best": r(st.best_val_loss),
        "curve_best_step": st.best_step,
        "resumed_from_step": res.resumed_from,
        "train_seconds": round(res.train_seconds, 2),
        "peak_rss_mb": round(res.peak_rss_mb, 1),
        "device": str(rt.device),
        "processes": rt.dist.world_size,
        "dp": res.extra.get("dp"),  # DP-SGD's epsilon spent (None when off)
        "canaries": {"count": cfg.canaries.count, "repeats": cfg.canaries.repeats} if cfg.canaries.count else None,
    }


def _plant_canaries(ctx: StageContext, cfg: TrainConfig, tokens: Any, tokenizer: Path, eot_id: int,
                    main: bool) -> Any:
    """The training tokens with ``cfg.canaries`` planted; ``canaries.json`` lists them and the controls."""
    from dataclasses import asdict

    from gristmill.core.workspace import write_json
    from gristmill.eval.canary import make_canaries, plant
    from gristmill.tokenizer.bpe import encode_documents, load_tokenizer

    canaries = make_canaries(cfg.canaries.count, ctx.seed)
    ids = list(encode_documents(load_tokenizer(tokenizer), [c.text for c in canaries if c.planted]))
    planted = plant(tokens, ids, cfg.canaries.repeats, eot_id, ctx.seed)
    if main:
        write_json(ctx.out_dir / "canaries.json", {"repeats": cfg.canaries.repeats,
                                                    "canaries": [asdict(c) for c in canaries]})
        ctx.log(f"[train] planted {cfg.canaries.count} canaries x {cfg.canaries.repeats} "
                f"({len(planted) - len(tokens):,} tokens); {cfg.canaries.count} controls not planted")
    return planted


def check_config(cfg: TrainConfig, recipe: Any) -> None:
    cfg.check_extras("train")


def report(rc: ReportContext) -> str:
    from gristmill.report.markdown import curve_section

    # drawn from metrics.jsonl, so an interrupted run (no manifest yet) still shows its curve
    section = curve_section(rc, "train", "Training", "nats per token", "train_loss.svg")
    return section + dp_section((rc.manifests.get("train") or {}).get("stats") or {}) if section else ""


def dp_section(stats: dict[str, Any]) -> str:
    """The privacy a DP-SGD run spent, from its stage stats (empty for a run without ``dp``)."""
    dp = stats.get("dp")
    if not isinstance(dp, dict):
        return ""
    clipped = dp.get("clipped_fraction")
    return (f"\n### Differential privacy\n\nTrained with DP-SGD: ({dp['epsilon']:g}, {dp['delta']:g})-DP after "
            f"{dp['steps']} steps ({dp['accountant'].upper()} accountant; noise multiplier {dp['noise_multiplier']:g}, "
            f"per-sample clipping at {dp['max_grad_norm']:g}, sampling rate {dp['sample_rate']:g}"
            + (f"; {clipped:.0%} of sample gradients clipped" if clipped is not None else "") + ").\n")


def summary(manifest: dict[str, Any], run_dir: Path) -> list[str]:
    s = manifest.get("stats") or {}
    lines = []
    if s.get("val_bits_per_byte") is not None:
        lines.append(f"  pre-trained model validation bits per byte {s['val_bits_per_byte']:.3f} "
                     f"(loss {s['val_loss']:.3f} over all {s['val_tokens']:,} validation tokens)")
    if s.get("stopped_by") == "time_budget" and s.get("max_steps"):
        lines.append(f"  note: pre-training stopped by train.time_budget after {s['steps']} of {s['max_steps']} "
                     f"steps ({s['steps'] / s['max_steps']:.0%})")
    return lines


STAGE = Stage(
    name="train",
    config=TrainConfig,
    needs=("tokenize",),
    run=run,
    help="pre-train the transformer",
    resumable=True,
    distributed=True,
    check=check_config,
    report=report,
    summary=summary,
)
