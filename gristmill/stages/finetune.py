"""finetune: supervised fine-tuning of a model (this run's pre-trained one, or the imported base) on chat data.

Reads ``<start_from>/model/``, the chat data (``synth/{train,val}.jsonl`` and/or the user's ``chat_files``)
and validation text for the LM metrics (tokenize's ``val.bin``, or prepare's ``val.jsonl`` for an imported
model); writes ``model/`` (a model dir), ``checkpoints/``, ``metrics.jsonl``, ``eval.json``, and with
``chat_files`` ``quarantine.jsonl`` (the records that could not be used, with the reason).

Each conversation is rendered with the chat template (loss on assistant tokens only,
:mod:`gristmill.train.sft`) and becomes one padded row of a batch, or with ``packing`` shares rows of
``seq_len`` tokens with others (no attention across them). With ``lora.enabled`` only low-rank adapters
train (:mod:`gristmill.model.lora`): checkpoints hold the adapters alone, ``adapter/`` keeps them after the
run, and ``model/`` is the base with them merged in (or, with ``lora.merge: false``, the adapter plus a
pointer to the base, merged when loaded). The loop is the one pre-training uses
(:func:`gristmill.train.loop.fit`), so resume, checkpoints, the schedule, the time budget and tracking
behave the same.

``eval.json`` compares the model before and after: the chat loss on the val conversations (assistant
tokens, nats per token) and the language-model bits per byte on validation text, computed with the same
function and over the same tokens before and after, so the numbers compare directly.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext, write_json
from gristmill.errors import InputError
from gristmill.train.config import FinetuneConfig


def _lm_tokens(ctx: StageContext, cfg: FinetuneConfig, tokenizer: Any) -> tuple[Any, int, int]:
    """The validation tokens the LM metrics use, their UTF-8 byte count, and the eot id.

    Fine-tuning this run's model: tokenize's ``val.bin`` (the tokens its other figures use). Fine-tuning an
    imported model: prepare's validation documents, encoded with that model's own tokenizer (bits per byte
    compare across tokenizers)."""
    import numpy as np

    from gristmill.eval.lm import prefix_bytes, text_tokens
    from gristmill.formats.document import read_documents
    from gristmill.formats.vocab import EOT_ID
    from gristmill.train.batches import load_tokens, read_meta

    max_tokens = cfg.lm_eval_tokens
    if cfg.start_from == "train":
        tok_dir = ctx.input_dir("tokenize")
        meta = read_meta(tok_dir)
        tokens = load_tokens(tok_dir / "val.bin", meta["dtype"])
        n_bytes = int(meta["splits"]["val"]["bytes"])
        if max_tokens is not None and max_tokens < len(tokens):
            tokens = np.asarray(tokens[:max_tokens])
            n_bytes = prefix_bytes(tokens, lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        return tokens, n_bytes, int(meta["eot_id"])
    texts = (d.text for d in read_documents(ctx.input_dir("prepare"), "val"))
    tokens, n_bytes, _ = text_tokens(tokenizer, texts, max_tokens=max_tokens)
    return tokens, n_bytes, EOT_ID


def _rounded(d: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if d is None else {k: round(v, 5) if isinstance(v, float) else v for k, v in d.items()}


def chat_paths(cfg: FinetuneConfig) -> list[Path]:
    """The user's chat files the config names (``chat_files``), each location expanded."""
    from gristmill.core.paths import expand

    return [f for loc in cfg.chat_files for f in expand(loc)]


def _chat_data(ctx: StageContext, cfg: FinetuneConfig, tokenizer: Any, seq_len: int
               ) -> tuple[Any, Any, dict[str, Any]]:
    """Train and val examples from synth's conversations and/or the user's chat files, and their counts."""
    from gristmill.core.jsonl import QuarantineWriter
    from gristmill.core.workspace import atomic_open
    from gristmill.train.sft import encode_examples, read_chat_records, read_user_chats

    train, val, counts = [], [], {}
    if cfg.synthetic:
        synth_dir = ctx.input_dir("synth")
        train += list(read_chat_records(synth_dir / "train.jsonl"))
        val += list(read_chat_records(synth_dir / "val.jsonl"))
        counts["synthetic"] = {"train": len(train), "val": len(val)}
    if cfg.chat_files:
        with atomic_open(ctx.out_dir / "quarantine.jsonl", "w", encoding="utf-8") as f:
            user = read_user_chats(chat_paths(cfg), cfg.chat_val_fraction, QuarantineWriter(f))
        if not user.train and not user.val:
            raise InputError(f"finetune.chat_files hold no usable conversation ({user.quarantined} quarantined, "
                             f"reasons in {ctx.out_dir / 'quarantine.jsonl'})")
        if not user.val and not val and len(user.train) > 1:
            user.val.append(user.train.pop())  # something to measure the chat loss on
        train += user.train
        val += user.val
        counts["chat_files"] = {"files": user.files, "train": len(user.train), "val": len(user.val),
                                "quarantined": user.quarantined}
    train_ex, val_ex = encode_examples(tokenizer, train, seq_len), encode_examples(tokenizer, val, seq_len)
    if len(val_ex) == 0:
        raise InputError("no validation conversations to measure fine-tuning: synth needs validation documents "
                         "(prepare's val split), or give chat_files with finetune.chat_val_fraction > 0")
    return train_ex, val_ex, counts


def run(ctx: StageContext, cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune the base model (all weights, or LoRA adapters) on the chat data; write the model, metrics
    and the before/after evaluation."""
    import torch

    from gristmill.eval.lm import evaluate_lm, lm_metrics
    from gristmill.eval.samples import chat_answers
    from gristmill.model.io import load_model, save_adapter_model, save_model
    from gristmill.model.lora import apply_lora, cast_frozen, load_adapter, merge_lora, save_adapter
    from gristmill.runtime import setup_runtime
    from gristmill.tokenizer.bpe import load_tokenizer
    from gristmill.train.batches import ChatBatches, ChatEvalData, PackedChatBatches
    from gristmill.train.loop import evaluate, fit
    from gristmill.train.sft import pack_examples

    t_start = time.monotonic()
    base_dir = ctx.input_dir(cfg.start_from) / "model"
    rt = setup_runtime(cfg.device, cfg.compile, cfg.threads, ctx.seed, cfg.precision, frozen_base=cfg.lora.enabled)
    # before/after scores use the device's default arithmetic whatever training used, so they compare
    eval_rt = dataclasses.replace(rt, bf16=rt.device.type == "cuda")
    main = rt.dist.is_main
    model = load_model(base_dir, rt.device)
    tokenizer = load_tokenizer(base_dir)
    seq_len = min(cfg.seq_len or min(model.config.block_size, 1024), model.config.block_size)
    width = seq_len if rt.compile else None  # a compiled model wants one shape

    train_ex, val_ex, data_counts = _chat_data(ctx, cfg, tokenizer, seq_len)
    packed = None
    if cfg.packing:
        packed = pack_examples(train_ex, seq_len)
        train_data = PackedChatBatches(packed, cfg.batch_size, ctx.seed, rt.dist.rank, rt.dist.world_size)
        tokens_per_step = round(cfg.batch_size * packed.tokens / max(len(packed), 1))
    else:
        train_data = ChatBatches(train_ex, cfg.batch_size, ctx.seed, rt.dist.rank, rt.dist.world_size, width)
        tokens_per_step = round(cfg.batch_size * sum(len(i) - 1 for i in train_ex.ids) / len(train_ex))
    val_data = ChatEvalData(val_ex, cfg.eval_batch_size, rt.dist.rank, rt.dist.world_size, width)
    if main:
        ctx.log(
            f"[finetune] {len(train_ex)} train / {len(val_ex)} val conversations "
            f"({train_ex.truncated} + {val_ex.truncated} cut to {seq_len} tokens, "
            f"{train_ex.dropped + val_ex.dropped} dropped"
            + (f"; packed into {len(packed)} rows, {packed.fill:.0%} full" if packed is not None else "")
            + f"); base model {base_dir}")

    lm_on = cfg.lm_eval_tokens != 0
    lm_tokens, lm_bytes, eot = _lm_tokens(ctx, cfg, tokenizer) if lm_on else (None, 0, 0)

    def lm_eval(m: Any) -> dict[str, Any] | None:
        if not lm_on or len(lm_tokens) == 0 or lm_bytes == 0:
            return None
        return evaluate_lm(m, lm_tokens, lm_bytes, batch_size=cfg.eval_batch_size, eot_id=eot,
                           device=rt.device, autocast=eval_rt.autocast)

    # Scores of the base model, kept beside the checkpoints so a resumed attempt does not redo them.
    before_path = ctx.out_dir / "checkpoints" / "before.json"
    before = json.loads(before_path.read_text(encoding="utf-8")) if before_path.is_file() else None
    if before is None or before.get("fingerprint") != ctx.fingerprint:
        t0 = time.monotonic()
        if main:
            ctx.log(f"[finetune] scoring the base model: {val_data.n_tokens:,} assistant tokens"
                    + (f" and {len(lm_tokens):,} validation text tokens" if lm_on else ""))
        nats, n = evaluate(model, val_data.batches(None), eval_rt)
        train_stats = ctx.input_manifest("train").get("stats") or {} if cfg.start_from == "train" else {}
        if lm_on and cfg.lm_eval_tokens is None and train_stats.get("val_tokens") == len(lm_tokens):
            # the base model's whole-split figures: computed once, by the train stage
            lm = lm_metrics(train_stats["val_loss"] * len(lm_tokens), len(lm_tokens), lm_bytes)
        else:
            lm = lm_eval(model)
        answers = chat_answers(model, tokenizer, cfg.sample_prompts, cfg.sample_tokens) if main else []
        before = {"fingerprint": ctx.fingerprint, "chat": {"loss": nats / n, "tokens": n}, "lm": lm,
                  "answers": answers, "lm_seconds": time.monotonic() - t0}
        if main:
            write_json(before_path, before)
    # The budget must also cover the final scoring done after fit returns (about what "before" took):
    # start its clock that much earlier (fit reserves time for its own final evaluation and checkpoint).
    lm_reserve = before["lm_seconds"]

    lora = None
    if cfg.lora.enabled:
        layers = apply_lora(model, cfg.lora)
        if rt.bf16:
            cast_frozen(model, torch.bfloat16)  # the frozen base in bf16: half its memory, bf16 matmuls
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        lora = {"rank": cfg.lora.rank, "alpha": cfg.lora.alpha, "layers": len(layers),
                "trainable_parameters": trainable, "merged": cfg.lora.merge}
        if main:
            ctx.log(f"[finetune] LoRA rank {cfg.lora.rank} on {len(layers)} layers: {trainable:,} trainable of "
                    f"{sum(p.numel() for p in model.parameters()):,} parameters; {rt.dtype_name}")

    res = fit(model, cfg, rt, train_data, val_data, ctx.out_dir, ctx.fingerprint, log=ctx.log,
              tokens_per_step=tokens_per_step, start_time=t_start - lm_reserve,
              run_name=f"{ctx.run_dir.name}-finetune", params=cfg.model_dump(mode="json"), key_prefix="finetune",
              dp_records=len(train_ex))

    if not main:
        return {}
    if lora is None:
        final = res.model
        save_model(ctx.out_dir / "model", final, base_dir / "tokenizer.json")
    else:
        # The adapters go onto a fresh float32 copy of the base (training may have held it in bf16).
        adapter_dir = ctx.out_dir / ("adapter" if cfg.lora.merge else "model")
        if cfg.lora.merge:
            save_adapter(adapter_dir, res.model, cfg.lora)  # the adapter alone, a few MB
        else:  # model/ is the adapter plus a pointer to the base: load_model merges them on load
            save_adapter_model(adapter_dir, res.model, cfg.lora, base_dir, base_dir / "tokenizer.json")
        del res.model, model
        final = load_model(base_dir, rt.device)
        load_adapter(final, adapter_dir)
        merge_lora(final)
        if cfg.lora.merge:
            save_model(ctx.out_dir / "model", final, base_dir / "tokenizer.json")
    final.eval()
    nats, n = evaluate(final, val_data.batches(None), eval_rt)
    chat_after = {"loss": nats / n, "tokens": n}
    if lm_on:
        ctx.log(f"[finetune] scoring the fine-tuned model on {len(lm_tokens):,} validation text tokens")
    after_lm = lm_eval(final)
    answers_after = chat_answers(final, tokenizer, cfg.sample_prompts, cfg.sample_tokens)
    result = {
        "base_model": f"{cfg.start_from}/model",
        "answers": [{"prompt": b["prompt"], "before": b["answer"], "after": a["answer"]}
                    for b, a in zip(before.get("answers") or [], answers_after, strict=False)],
        "chat_val": {"before": _rounded(before["chat"]), "after": _rounded(chat_after), "examples": len(val_ex),
                     "unit": "nats per assistant token"},
        "lm_val": None if before["lm"] is None else {
            "before": _rounded(before["lm"]), "after": _rounded(after_lm),
            "split": "tokenize/val.bin" if cfg.start_from == "train" else "prepare/val",
            "max_tokens": cfg.lm_eval_tokens},
    }
    write_json(ctx.out_dir / "eval.json", result)
    st = res.state
    chat_b, chat_a = before["chat"]["loss"], chat_after["loss"]
    ctx.log(f"[finetune] chat val loss {chat_b:.4f} -> {chat_a:.4f}"
            + (f"; LM bits/byte {before['lm']['bits_per_byte']:.4f} -> {after_lm['bits_per_byte']:.4f}"
               if before["lm"] and after_lm else ""))
    return {
        "start_from": cfg.start_from,
        "steps": st.step,
        "max_steps": cfg.max_steps,
        "stopped_by": st.stopped_by,
        "resumed_from_step": res.resumed_from,
        "train_examples": len(train_ex),
        "data": data_counts,
        "lora": lora,
        "dp": res.extra.get("dp"),  # DP-SGD's epsilon spent (None when off)
        "packing": None if packed is None else {"rows": len(packed), "fill": round(packed.fill, 4),
                                                "seq_len": seq_len},
        "val_examples": len(val_ex),
        "truncated": train_ex.truncated + val_ex.truncated,
        "dropped": train_ex.dropped + val_ex.dropped,
        "train_loss": None if res.train_loss is None else round(res.train_loss, 5),
        "chat_val_loss_before": round(chat_b, 5),
        "chat_val_loss_after": None if chat_a is None else round(chat_a, 5),
        "tokens_per_s": round(res.tokens_per_s, 1),
        "train_seconds": round(res.train_seconds, 2),
        "device": str(rt.device),
        # only when the LM evaluation ran (lm_eval_tokens != 0)
        **({"lm_val_tokens": before["lm"]["tokens"],
            "lm_val_bpb_before": round(before["lm"]["bits_per_byte"], 5),
            "lm_val_bpb_after": round(after_lm["bits_per_byte"], 5)} if before["lm"] and after_lm else {}),
    }


def check_config(cfg: FinetuneConfig, recipe: Any) -> None:
    cfg.check_extras("finetune")


def reads(cfg: FinetuneConfig) -> tuple[str, ...]:
    synth = ("synth",) if cfg.synthetic else ()
    lm = ("prepare",) if cfg.start_from == "base" else ("tokenize",)
    return (cfg.start_from, *synth, *(lm if cfg.lm_eval_tokens != 0 else ()))


def report(rc: ReportContext) -> str:
    from gristmill.report.markdown import (
        before_after_rows,
        curve_section,
        read_json_or_none,
        table,
    )
    from gristmill.stages.train import dp_section

    parts = [curve_section(rc, "finetune", "Fine-tuning", "nats per assistant token", "finetune_loss.svg"),
             dp_section((rc.manifests.get("finetune") or {}).get("stats") or {})]
    ft = read_json_or_none(rc.stage_dir("finetune") / "eval.json")
    if isinstance(ft, dict):
        rows = before_after_rows(ft)
        if rows:
            parts.append("### Before and after fine-tuning\n\nChat val: loss on the assistant tokens of synth's "
                         "validation conversations. Text val: the language-model metrics on tokenize's "
                         "validation text (the same tokens and definition as the Evaluate section), which "
                         "show what fine-tuning cost general text modelling.\n\n"
                         + table(["metric", "base model", "fine-tuned", "change"], rows) + "\n")
        parts.append(answers_section(rc, ft))
    return "\n".join(p for p in parts if p)


def answers_section(rc: ReportContext, ft: dict[str, Any]) -> str:
    """The greedy answers to the chat prompts before and after fine-tuning, when the evaluate stage has not
    put every model's answers side by side (its section does when it ran)."""
    from gristmill.report.markdown import clip, read_json_or_none, table

    ev = read_json_or_none(rc.stage_dir("evaluate") / "eval.json")
    if isinstance(ev, dict) and any((m or {}).get("chat_answers") for m in (ev.get("models") or {}).values()):
        return ""
    parts = []
    for a in ft.get("answers") or []:
        rows = [["before fine-tuning", clip(a["before"], 400)], ["fine-tuned", clip(a["after"], 400)]]
        parts.append(f"**{a['prompt']}**\n\n" + table(["model", "answer (greedy)"], rows) + "\n")
    if not parts:
        return ""
    return "### Answers before and after\n\nThe same chat prompts, answered greedily.\n\n" + "\n".join(parts)


def summary(manifest: dict[str, Any], run_dir: Path) -> list[str]:
    s = manifest.get("stats") or {}
    lines = []
    if "lm_val_bpb_after" in s:
        lines.append(f"  fine-tuned model  validation bits per byte {s['lm_val_bpb_after']:.3f} over "
                     f"{s['lm_val_tokens']:,} tokens ({s['lm_val_bpb_before']:.3f} before fine-tuning, same tokens)")
    if "chat_val_loss_after" in s:
        lines.append(f"  chat loss         {s['chat_val_loss_before']:.3f} -> {s['chat_val_loss_after']:.3f} "
                     f"(nats per assistant token on held-out conversations)")
    if s.get("stopped_by") == "time_budget" and s.get("max_steps"):
        lines.append(f"  note: fine-tuning stopped by finetune.time_budget after {s['steps']} of {s['max_steps']} "
                     f"steps ({s['steps'] / s['max_steps']:.0%})")
    return lines


STAGE = Stage(
    name="finetune",
    config=FinetuneConfig,
    needs=("train", "base", "synth", "tokenize", "prepare"),
    reads=reads,
    run=run,
    help="supervised fine-tuning on the synthetic chat data (of this run's model or the imported base)",
    resumable=True,
    distributed=True,
    check=check_config,
    external_inputs=chat_paths,
    report=report,
    summary=summary,
)
