"""train: pre-training the transformer, and the training-loop pieces fine-tuning reuses.

Stage entry point: ``run_train(ctx, cfg: TrainConfig) -> stats``. Reusable pieces:

- configs: ``OptimConfig`` (optimiser + schedule) < ``LoopConfig`` (loop) < ``TrainConfig`` (+ model);
- ``build_optimizer(model, cfg)``, ``Muon``, ``lr_multiplier(step, progress, cfg)``, ``set_lr(opt, mult)``;
- ``train_step(model, opt, x, y, rt, micro_batch_size=, grad_clip=)``, ``evaluate(model, batches, rt)``;
- ``fit(model, cfg, rt, train_data, val_data, out_dir, fingerprint, tokens_per_step=...)``: the whole loop
  with resume, checkpoints, early stopping, time budget and tracking;
- ``write_checkpoint`` / ``read_checkpoint`` / ``latest_checkpoint``;
- data: ``read_meta``, ``load_tokens``, ``RandomWindows``, ``eval_windows``.
"""

from gristmill.train.checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint
from gristmill.train.config import LoopConfig, OptimConfig, TrainConfig
from gristmill.train.data import BatchSource, RandomWindows, eval_windows, load_tokens, read_meta
from gristmill.train.loop import EvalData, FitResult, TrainerState, evaluate, fit, train_step
from gristmill.train.optim import Muon, Optimizers, build_optimizer, lr_multiplier, orthogonalize, set_lr
from gristmill.train.pretrain import TokenEvalData, run_train
from gristmill.train.tracking import Tracker

__all__ = [
    "BatchSource", "EvalData", "FitResult", "LoopConfig", "Muon", "OptimConfig", "Optimizers", "RandomWindows",
    "TokenEvalData", "TrainConfig", "Tracker", "TrainerState", "build_optimizer", "eval_windows", "evaluate",
    "fit", "latest_checkpoint", "load_tokens", "lr_multiplier", "orthogonalize", "read_checkpoint", "read_meta",
    "run_train", "set_lr", "train_step", "write_checkpoint",
]
