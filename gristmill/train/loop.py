"""The training loop shared by pre-training and fine-tuning.

``fit`` runs it end to end: optimiser, resume from the newest good checkpoint, gradient accumulation,
clipping, schedule, periodic validation, checkpoints, early stopping, a wall-clock budget, tracking and
progress, then a final evaluation and checkpoint. Its pieces (``train_step``, ``evaluate``,
``TrainerState``, ``Progress``) are usable on their own.

Validation has two token sets, each labelled where it is reported: the periodic evaluations (the curve,
early stopping) score the first ``eval_tokens`` tokens of the split; the final evaluation scores the
whole split (and the first ``eval_tokens`` again, so the curve's last point is comparable).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from gristmill.eval.lm import sum_loss
from gristmill.model.gpt import unwrap
from gristmill.runtime import Runtime, current_rss_mb, peak_rss_mb, rng_state, set_rng_state
from gristmill.train.batches import BatchSource
from gristmill.train.checkpoint import (
    latest_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    step_path,
    write_checkpoint,
)
from gristmill.train.config import LoopConfig
from gristmill.train.optim import Optimizers, build_optimizer, lr_multiplier, set_lr
from gristmill.train.tracking import Tracker


class EvalData(Protocol):
    n_tokens: int
    """Tokens in the whole validation split (for time estimates)."""

    def batches(self, max_tokens: int | None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """This process's validation batches covering the first ``max_tokens`` tokens (None: all)."""
        ...


def _all_reduce_sum(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    if rt.dist.enabled:
        import torch.distributed as tdist

        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def _broadcast_floats(values: list[float], rt: Runtime) -> list[float]:
    """Rank 0's values on every rank."""
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    tdist.broadcast(t, src=0)
    return t.tolist()


def train_step(model: nn.Module, opt: Optimizers | torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               rt: Runtime, *, micro_batch_size: int | None = None, grad_clip: float = 0.0,
               segments: torch.Tensor | None = None) -> tuple[torch.Tensor, float | None]:
    """One optimiser step on this process's batch x, y [b, T] (CPU or device tensors); ``segments`` [b, T]
    for packed rows (see ``GPT.forward``).

    The batch is split into micro-batches of ``micro_batch_size`` whose gradients accumulate (under DDP,
    only the last one all-reduces); the loss of each is weighted by its share of the batch. Returns the
    mean loss (a device tensor, not synchronised: call ``.item()`` when you need it) and the gradient norm
    before clipping (None without clipping).
    """
    b = x.size(0)
    mb = micro_batch_size or b
    n_micro = math.ceil(b / mb)
    total = torch.zeros((), device=rt.device)
    for i in range(n_micro):
        xb = x[i * mb:(i + 1) * mb].to(rt.device, non_blocking=True)
        yb = y[i * mb:(i + 1) * mb].to(rt.device, non_blocking=True)
        kw = {} if segments is None else {"segments": segments[i * mb:(i + 1) * mb].to(rt.device)}
        last = i == n_micro - 1
        sync = model.no_sync() if (not last and hasattr(model, "no_sync")) else contextlib.nullcontext()
        with sync:
            with rt.autocast():
                _, loss = model(xb, yb, **kw)
            (loss * (xb.size(0) / b)).backward()
        total += loss.detach() * (xb.size(0) / b)
    norm = None
    if grad_clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total, norm


def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], rt: Runtime
             ) -> tuple[float, int]:
    """Sum of the loss in nats over every target != -100, and their count (summed over all processes)."""
    return sum_loss(model, batches, rt.device, rt.autocast, lambda t: _all_reduce_sum(t, rt))


class Progress:
    """Training progress on stderr: a live bar in a terminal; in a log file, one line every ``every_s``
    seconds. The time left is the sooner of the steps left at the current pace and the time budget."""

    def __init__(self, total: int, initial: int, desc: str, budget: float | None, every_s: float = 30.0,
                 interactive: bool | None = None):
        self.total, self.desc, self.budget, self.every_s = total, desc, budget, every_s
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.step, self.last_line, self.started = initial, time.monotonic(), time.monotonic()
        self.first = initial
        self.post: dict[str, str] = {}
        self.bar = None
        if self.interactive:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr,
                            dynamic_ncols=True, leave=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def eta(self, elapsed: float) -> float | None:
        """Seconds left: steps left at the pace so far, capped by the time budget."""
        done = self.step - self.first
        pace = (time.monotonic() - self.started) / done if done else None
        left = None if pace is None else pace * (self.total - self.step)
        if self.budget:
            budget_left = max(0.0, self.budget - elapsed)
            left = budget_left if left is None else min(left, budget_left)
        return left

    def update(self, step: int, elapsed: float, **post: str) -> None:
        self.step = step
        if post:
            self.post = post
        eta = self.eta(elapsed)
        fields = {**self.post, **({"eta": f"{eta:.0f}s"} if eta is not None else {})}
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=False)
            self.bar.update(step - self.bar.n)
        elif time.monotonic() - self.last_line >= self.every_s:
            self.last_line = time.monotonic()
            print(f"{self.desc}: step {step}/{self.total} " + " ".join(f"{k} {v}" for k, v in fields.items()),
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class TrainerState:
    """Counters a checkpoint must restore for the run to continue exactly."""

    step: int = 0
    tokens_seen: int = 0
    elapsed: float = 0.0
    """Seconds of wall-clock spent in earlier attempts (time budget and schedule progress)."""
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_by: str | None = None
    last_val_loss: float | None = None
    last_train_loss: float | None = None


@dataclass
class FitResult:
    model: nn.Module
    """The trained model, unwrapped (the best weights when early stopping is on)."""
    state: TrainerState
    train_loss: float | None
    val_loss: float | None
    """Mean loss in nats per token over the whole validation split at the end."""
    val_nats: float
    val_tokens: int
    tokens_per_s: float
    train_seconds: float
    resumed_from: int | None
    peak_rss_mb: float
    curve_val_loss: float | None = None
    """Mean loss over the first ``eval_tokens`` tokens at the end: the token set of the curve's points."""
    extra: dict[str, Any] = field(default_factory=dict)


def _wrap(model: nn.Module, cfg: LoopConfig, rt: Runtime) -> nn.Module:
    """torch.compile and DDP/FSDP as the runtime says; returns the module to call."""
    if rt.dist.enabled and cfg.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in unwrap(model).blocks:
            fully_shard(block)
        fully_shard(model)
    wrapped = torch.compile(model) if rt.compile else model
    if rt.dist.enabled and cfg.distributed == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(wrapped, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return wrapped


def _fsdp(cfg: LoopConfig, rt: Runtime) -> bool:
    return rt.dist.enabled and cfg.distributed == "fsdp"


def _full_states(model: nn.Module, opt: Optimizers, cfg: LoopConfig, rt: Runtime
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full (unsharded) model and optimiser state dicts; a collective under FSDP (call on every rank)."""
    if _fsdp(cfg, rt):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        o = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(model, options=o),
                {"fsdp": get_optimizer_state_dict(model, opt.optimizers[0], options=o)})
    return trainable_state_dict(unwrap(model)), opt.state_dict()


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state a checkpoint must keep: the whole state dict, or, when some parameters are frozen (LoRA),
    only the trainable ones (the frozen base is re-read from its own model directory on resume)."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    sd = model.state_dict()
    return {k: v for k, v in sd.items() if k not in frozen} if frozen else sd


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a ``trainable_state_dict``; RuntimeError if it lacks a trainable tensor or has unknown ones."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    missing, unexpected = model.load_state_dict(state, strict=not frozen)
    if set(missing) - frozen or unexpected:
        raise RuntimeError(f"checkpoint does not fit the model: missing {sorted(set(missing) - frozen)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]}")


def _load_states(model: nn.Module, opt: Optimizers, model_state: dict[str, torch.Tensor],
                 opt_state: dict[str, Any], cfg: LoopConfig, rt: Runtime) -> None:
    if _fsdp(cfg, rt):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        o = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_state, options=o)
        set_optimizer_state_dict(model, opt.optimizers[0], opt_state["fsdp"], options=o)
        return
    load_trainable_state(unwrap(model), model_state)
    opt.load_state_dict(opt_state)


def fit(model: nn.Module, cfg: LoopConfig, rt: Runtime, train_data: BatchSource, val_data: EvalData,
        out_dir: Path, fingerprint: str, *, log: Callable[[str], None] = print, tokens_per_step: int,
        start_time: float | None = None, run_name: str = "train", params: dict[str, Any] | None = None,
        key_prefix: str = "train", dp_records: int | None = None) -> FitResult:
    """Train ``model`` as ``cfg`` says; checkpoints go to ``out_dir/checkpoints``, metrics to
    ``out_dir/metrics.jsonl``. Only rank 0 writes. Resumes from the newest valid checkpoint tagged with
    ``fingerprint``. ``tokens_per_step``: tokens in one global optimiser step (for throughput).
    ``start_time`` (time.monotonic() at stage start) makes the time budget cover set-up done before.
    ``dp_records``: with ``cfg.dp.enabled``, the training records batches are drawn from (for the privacy
    accounting); the epsilon spent is in ``FitResult.extra["dp"]``.
    """
    t_start = time.monotonic() if start_time is None else start_time
    main = rt.dist.is_main
    ckpt_root = Path(out_dir) / "checkpoints"
    world = rt.dist.world_size
    micro = cfg.micro_batch_size or cfg.batch_size // world
    if cfg.batch_size % world or (cfg.batch_size // world) % micro:
        from gristmill.errors import ConfigError

        raise ConfigError(f"{key_prefix}.batch_size {cfg.batch_size} must be a multiple of processes ({world}) "
                          f"x micro_batch_size ({micro})")

    dp = None
    if cfg.dp.enabled:
        from gristmill.train.dp import make_dpsgd

        if rt.dist.enabled:
            from gristmill.errors import ConfigError

            raise ConfigError(f"{key_prefix}.dp runs in one process; launch without torchrun")
        dp = make_dpsgd(cfg.dp, dp_records or 0, cfg.batch_size, cfg.max_steps, key_prefix)
        if main:
            log(f"[{key_prefix}] DP-SGD: noise multiplier {dp.noise_multiplier:.3f}, clip {dp.max_grad_norm}, "
                f"sampling rate {dp.sample_rate:.4g}; epsilon after {cfg.max_steps} steps "
                f"{dp.epsilon(cfg.max_steps):.3f} at delta {dp.delta:g}")

    model.to(rt.device)
    model.train()
    wrapped = _wrap(model, cfg, rt)
    eval_model = wrapped.module if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) else wrapped
    opt = build_optimizer(model, cfg)
    st = TrainerState()

    ckpt = latest_checkpoint(ckpt_root, fingerprint, warn=log if main else (lambda m: None))
    resumed_from = None
    if ckpt is not None:
        s = ckpt.state
        _load_states(model, opt, ckpt.model_state, s["optimizer"], cfg, rt)
        train_data.load_state_dict(s["data"])
        st = TrainerState(**s["trainer"])
        if rt.dist.rank == s.get("rank", 0):
            set_rng_state(s["rng"])
        resumed_from = st.step
        if main:
            log(f"resuming from checkpoint {ckpt.path.name} (step {st.step}, {st.tokens_seen:,} tokens)")
        del ckpt

    tracker = Tracker(out_dir, tensorboard=cfg.tensorboard, mlflow=cfg.mlflow, run_name=run_name,
                      params=params, resume_step=st.step, key_prefix=key_prefix) if main else None
    budget = cfg.time_budget
    elapsed_before = st.elapsed

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - t_start

    def save(best: bool = False) -> dict[str, torch.Tensor]:
        t0 = time.monotonic()
        st.elapsed = elapsed()
        model_state, opt_state = _full_states(wrapped if _fsdp(cfg, rt) else model, opt, cfg, rt)
        if main:
            if best:
                write_checkpoint(ckpt_root / "best", model_state, {"trainer": asdict(st)}, fingerprint)
            else:
                state = {"trainer": asdict(st), "optimizer": opt_state, "data": train_data.state_dict(),
                         "rng": rng_state(), "rank": 0}
                write_checkpoint(step_path(ckpt_root, st.step), model_state, state, fingerprint)
                prune_checkpoints(ckpt_root, cfg.keep_checkpoints)
        timing["ckpt"] = max(timing["ckpt"], time.monotonic() - t0)
        return model_state

    timing = {"ckpt": 0.5, "eval_per_token": 0.0, "step": 0.0}

    def run_eval(max_tokens: int | None) -> tuple[float, int]:
        t0 = time.monotonic()
        # Under DDP, evaluate the inner module: DDP's forward would broadcast buffers (a collective).
        nats, n = evaluate(eval_model, val_data.batches(max_tokens), rt)
        if n:
            timing["eval_per_token"] = max(timing["eval_per_token"], (time.monotonic() - t0) / n)
        return nats, n

    def reserve() -> float:
        """Seconds to keep for the final evaluation and checkpoint."""
        per_tok = timing["eval_per_token"]
        if not per_tok and timing["step"]:  # no eval yet: forward-only is ~1/3 of a training step
            per_tok = timing["step"] / tokens_per_step * 0.5 * world
        final_tokens = val_data.n_tokens + min(cfg.eval_tokens or 0, val_data.n_tokens)  # whole split + curve set
        return per_tok * final_tokens + timing["ckpt"] + 0.01 * (budget or 0) + 0.25

    bar = Progress(cfg.max_steps, st.step, run_name, budget) if main and cfg.progress else None

    tokens_this_attempt, train_time = 0, 0.0
    loss_acc = torch.zeros((), device=rt.device)
    loss_n = 0
    try:
        while st.stopped_by is None:
            if st.step >= cfg.max_steps:
                st.stopped_by = "max_steps"
                break
            now, out_of_time = elapsed(), 0.0
            if budget and st.step > 0 and now + timing["step"] + reserve() > budget:
                out_of_time = 1.0
            if budget and rt.dist.enabled:  # every rank must stop at the same step and use the same lr
                now, out_of_time = _broadcast_floats([now, out_of_time], rt)
            if out_of_time:
                st.stopped_by = "time_budget"
                break
            t0 = time.monotonic()
            step_progress = st.step / cfg.max_steps if cfg.max_steps else 1.0
            lr_mult = lr_multiplier(st.step, max(step_progress, now / budget) if budget else step_progress, cfg)
            set_lr(opt, lr_mult)
            x, y, *seg = train_data.next_batch()  # packed rows also carry their segments
            if dp is not None:
                loss, gnorm = dp.step(wrapped, opt, x, y, rt)
            else:
                loss, gnorm = train_step(wrapped, opt, x, y, rt, micro_batch_size=micro, grad_clip=cfg.grad_clip,
                                         segments=seg[0] if seg else None)
            st.step += 1
            st.tokens_seen += tokens_per_step
            loss_acc += loss
            loss_n += 1
            dt = time.monotonic() - t0
            # The first step pays for warm-up (allocations, compilation): do not let it set the estimate.
            timing["step"] = dt if timing["step"] == 0.0 or st.step == 1 else 0.9 * timing["step"] + 0.1 * dt
            train_time += dt
            tokens_this_attempt += tokens_per_step

            if st.step % cfg.log_every == 0 or st.step == cfg.max_steps:
                mean_loss = _all_reduce_sum(loss_acc / loss_n, rt) / world
                train_loss = st.last_train_loss = float(mean_loss)
                loss_acc.zero_()
                loss_n = 0
                tok_s = tokens_this_attempt / max(train_time, 1e-9)
                if tracker is not None:
                    rec = {f"{key_prefix}/loss": train_loss, "lr_mult": lr_mult, "tokens": st.tokens_seen,
                           "tokens_per_s": tok_s, "rss_mb": current_rss_mb(), "elapsed_s": elapsed()}
                    if gnorm is not None:
                        rec["grad_norm"] = gnorm
                    if dp is not None:
                        rec["dp_epsilon"] = dp.epsilon(st.step)
                    tracker.log(st.step, rec)
                if bar is not None:
                    bar.post = {"loss": f"{train_loss:.3f}", "tok/s": f"{tok_s:,.0f}"}
            if bar is not None:
                bar.update(st.step, elapsed())

            last = st.step >= cfg.max_steps
            if cfg.eval_every and st.step % cfg.eval_every == 0 and not last:
                nats, n = run_eval(cfg.eval_tokens)
                val = nats / max(n, 1)
                st.last_val_loss = val
                if tracker is not None:
                    tracker.log(st.step, {f"{key_prefix}/val_loss": val})
                if st.best_val_loss is None or val < st.best_val_loss - cfg.early_stopping_min_delta:
                    st.best_val_loss, st.best_step, st.evals_since_best = val, st.step, 0
                    if cfg.early_stopping_patience:
                        save(best=True)
                else:
                    st.evals_since_best += 1
                    if cfg.early_stopping_patience and st.evals_since_best >= cfg.early_stopping_patience:
                        st.stopped_by = "early_stopping"
                        if main:
                            log(f"early stopping at step {st.step}: no improvement on {st.best_val_loss:.4f} "
                                f"(step {st.best_step}) for {st.evals_since_best} evaluations")
            if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0 and st.stopped_by is None and not last:
                save()
    finally:
        if bar is not None:
            bar.close()

    if loss_n:  # steps since the last log line (after a resume with nothing left: the checkpoint's value)
        st.last_train_loss = float(_all_reduce_sum(loss_acc / loss_n, rt) / world)
    if cfg.early_stopping_patience and st.best_step is not None and (ckpt_root / "best").is_dir():
        best = read_checkpoint(ckpt_root / "best", fingerprint)
        if _fsdp(cfg, rt):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(wrapped, best.model_state, options=StateDictOptions(full_state_dict=True))
        else:
            load_trainable_state(model, best.model_state)
        if main:
            log(f"using the best weights: step {st.best_step}, val loss {st.best_val_loss:.4f}")
    if main:
        log(f"[{key_prefix}] final evaluation: {val_data.n_tokens:,} validation tokens"
            + (f" (whole split) and the first {cfg.eval_tokens:,} (the curve's token set)"
               if cfg.eval_tokens and cfg.eval_tokens < val_data.n_tokens else " (whole split)"))
    curve_loss = None
    if cfg.eval_tokens and cfg.eval_tokens < val_data.n_tokens:
        c_nats, c_n = run_eval(cfg.eval_tokens)
        curve_loss = c_nats / c_n if c_n else None
    nats, n = run_eval(None)
    val_loss = nats / n if n else None
    if curve_loss is None:
        curve_loss = val_loss
    final_state = save()
    result_model = unwrap(model)
    if _fsdp(cfg, rt) and main:  # hand back an ordinary (unsharded) copy of the model for saving
        result_model = type(result_model)(result_model.config)
        result_model.load_state_dict(final_state)
    if tracker is not None:
        tracker.log(st.step, {f"{key_prefix}/val_loss": curve_loss if curve_loss is not None else float("nan"),
                              f"{key_prefix}/final_val_loss": val_loss if val_loss is not None else float("nan"),
                              "peak_rss_mb": peak_rss_mb()})
        tracker.close()
    if main:
        budget_note = (f" ({st.step / cfg.max_steps:.0%} of max_steps {cfg.max_steps}: raise "
                       f"{key_prefix}.time_budget or lower {key_prefix}.max_steps)"
                       if st.stopped_by == "time_budget" and cfg.max_steps else "")
        log(f"[{key_prefix}] stopped by {st.stopped_by} at step {st.step}{budget_note} after {elapsed():.1f}s; "
            f"final val loss {val_loss if val_loss is None else round(val_loss, 4)} over {n:,} tokens")
    return FitResult(model=result_model, state=st, train_loss=st.last_train_loss, val_loss=val_loss, val_nats=nats,
                     curve_val_loss=curve_loss, extra={"dp": dp.summary(st.step)} if dp is not None else {},
                     val_tokens=n, tokens_per_s=tokens_this_attempt / max(train_time, 1e-9),
                     train_seconds=train_time, resumed_from=resumed_from, peak_rss_mb=peak_rss_mb())
