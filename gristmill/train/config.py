"""Training configs (pydantic only, no torch). ``OptimConfig`` (optimiser and schedule) < ``LoopConfig``
(the loop: batches, budget, evaluation, checkpoints, tracking, runtime) < ``TrainConfig`` (pre-training:
adds the model) and ``FinetuneConfig`` (fine-tuning: gentler defaults); both run ``gristmill.train.loop.fit``
and take the same keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gristmill.core.config import Config
from gristmill.core.extras import check
from gristmill.formats.chat import SAMPLE_PROMPTS
from gristmill.model.config import ModelConfig


class OptimConfig(Config):
    """Optimiser, learning-rate schedule and gradient clipping."""

    optimizer: Literal["adamw", "muon"] = "adamw"
    """``adamw`` for every parameter, or ``muon`` for the hidden weight matrices with AdamW for the
    embeddings, output head and norm gains."""
    lr: float = Field(3e-3, gt=0)
    """Peak AdamW learning rate (with ``muon``: the rate of the embeddings, head and gains)."""
    embedding_lr: float | None = Field(None, gt=0)
    """Peak AdamW learning rate of the token embedding (None = ``lr``); with tied embeddings it is also
    the output head's."""
    matrix_lr: float = Field(0.02, gt=0)
    """Peak Muon learning rate of the hidden matrices (``optimizer: muon`` only)."""
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    """Muon's (Nesterov) momentum."""
    muon_ns_steps: int = Field(5, ge=1, le=10)
    """Newton-Schulz iterations that orthogonalise each Muon update (fewer = cheaper, less orthogonal)."""
    weight_decay: float = Field(0.1, ge=0)
    """Decoupled weight decay on weight matrices (embeddings and head included); never on norm gains."""
    beta1: float = Field(0.9, ge=0, lt=1)
    """AdamW's first-moment decay."""
    beta2: float = Field(0.95, ge=0, lt=1)
    """AdamW's second-moment decay."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this (0 = no clipping)."""
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """Learning-rate shape after warm-up: cosine decay, warm-up-stable-decay (flat, then a linear decay
    over the last ``decay_frac`` of the run), or constant."""
    warmup_steps: int = Field(100, ge=0)
    """Linear warm-up from 0 over this many optimiser steps."""
    decay_frac: float = Field(0.3, ge=0, le=1)
    """``wsd``: the fraction of the run (by steps, or by time under a time budget) spent decaying."""
    min_lr_frac: float = Field(0.1, ge=0, le=1)
    """The learning rate at the end of the decay, as a fraction of the peak."""


class DPConfig(Config):
    """Differentially private training (DP-SGD): every sample's gradient clipped, Gaussian noise added, and
    the privacy spent (epsilon at ``delta``) reported. Needs the ``privacy`` extra (opacus's accountants)."""

    enabled: bool = False
    """Train with DP-SGD. Each sample's gradient is computed on its own, a forward and backward pass per
    sample (about 2x slower per step than batched on a CPU at batch 8; more on a GPU, where batching pays
    most); ``grad_clip`` is not applied (per-sample clipping replaces it). Not with ``packing`` or several
    processes."""
    noise_multiplier: float | None = Field(None, gt=0)
    """Noise standard deviation as a multiple of ``max_grad_norm``; give this or ``target_epsilon``."""
    target_epsilon: float | None = Field(None, gt=0)
    """The epsilon to spend over ``max_steps`` steps: the noise multiplier is chosen to meet it."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Each sample's gradient is scaled to at most this L2 norm (its most influence on a step)."""
    delta: float = Field(1e-5, gt=0, lt=1)
    """The delta of (epsilon, delta)-DP: keep it below 1 / the number of training records."""
    accountant: Literal["rdp", "prv"] = "rdp"
    """Privacy accountant (opacus): ``rdp`` (Renyi DP) or ``prv`` (privacy random variables, tighter)."""

    @model_validator(mode="after")
    def _one_noise_source(self) -> DPConfig:
        if self.enabled and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("dp.enabled needs exactly one of noise_multiplier and target_epsilon")
        return self


class LoopConfig(OptimConfig):
    """The training loop shared by pre-training and fine-tuning."""

    max_steps: int = Field(1000, ge=0)
    """Optimiser steps to run (the schedule's length unless a time budget ends the run first)."""
    time_budget: float | None = Field(None, gt=0)
    """Wall-clock seconds for the whole stage: training stops early enough to still do the final
    evaluation and checkpoint; the schedule follows the elapsed fraction of the budget when that is ahead
    of the step fraction. None = no budget."""
    batch_size: int = Field(32, ge=1)
    """Sequences per optimiser step, over all processes and accumulation steps."""
    micro_batch_size: int | None = Field(None, ge=1)
    """Sequences per forward pass per process; gradient accumulation makes up the rest of batch_size
    (None = batch_size / processes, no accumulation)."""
    eval_every: int = Field(200, ge=0)
    """Validate every this many steps (0 = only at the end)."""
    eval_tokens: int | None = Field(65536, ge=1)
    """Validation tokens used by periodic evaluations (None = the whole split); the final one uses all."""
    eval_batch_size: int = Field(32, ge=1)
    """Sequences per forward pass when validating."""
    checkpoint_every: int = Field(200, ge=0)
    """Write a resumable checkpoint every this many steps (0 = only at the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many step checkpoints to keep (older ones are deleted once a newer one is complete)."""
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop after this many evaluations without a new best validation loss; the best weights become the
    output model (None = off)."""
    early_stopping_min_delta: float = Field(0.0, ge=0)
    """An evaluation must beat the best validation loss by more than this to count as better."""
    log_every: int = Field(10, ge=1)
    """Write a metrics.jsonl record (and update trackers) every this many steps."""
    tensorboard: bool = False
    """Also log to TensorBoard (``<stage>/tensorboard/``; needs the ``tracking`` extra)."""
    mlflow: bool = False
    """Also log to MLflow with a local SQLite store (``<stage>/mlflow.db``; needs the ``tracking`` extra)."""
    progress: bool = True
    """Show a progress bar (loss, tokens/s, ETA) on rank 0."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the model: ``auto`` = on with CUDA, off on CPU."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch (None = torch's default)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Arithmetic: ``bf16`` autocast (weights stay fp32, except a LoRA run's frozen base, stored in bf16),
    or ``fp32``. ``auto`` = bf16 on CUDA, and for LoRA on a CPU with bf16 units (AMX, AVX-512 BF16:
    about 2x faster there, half the frozen weights' memory); fp32 otherwise."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: data parallel with replicated weights (``ddp``) or sharded ones (``fsdp``, AdamW only)."""
    dp: DPConfig = DPConfig()
    """Differentially private training (DP-SGD) and the epsilon it spends."""

    @model_validator(mode="after")
    def _check_muon_fsdp(self) -> LoopConfig:
        if self.optimizer == "muon" and self.distributed == "fsdp":
            raise ValueError("optimizer muon needs whole matrices: use distributed: ddp with it")
        return self

    def check_extras(self, section: str) -> None:
        """The trackers this config switches on are installed (MissingExtra naming the extra if not)."""
        if self.tensorboard:
            check("tensorboard", "tracking", f"{section}.tensorboard")
        if self.mlflow:
            check("mlflow", "tracking", f"{section}.mlflow")
        if self.dp.enabled:
            check("opacus", "privacy", f"{section}.dp")


class CanaryConfig(Config):
    """Unique secrets planted in the pre-training tokens, whose exposure the evaluate stage measures."""

    count: int = Field(0, ge=0, le=1000)
    """Canaries to plant, each ``the secret code of <name> is dddd-dddd-dddd`` with an invented name and
    random digits from the run seed (0 = none). As many controls of the same format are made and never
    planted; ``train/canaries.json`` lists both."""
    repeats: int = Field(10, ge=1)
    """Times each canary is inserted into the training tokens, each time as a document of its own at a
    random document boundary."""


class TrainConfig(LoopConfig):
    """Pre-training the transformer on the tokenize stage's token files.

    The defaults are the recipe tuned on tinyshakespeare for 2 CPU cores (benchmarks/
    train_tinyshakespeare.py): Muon for the hidden matrices, a higher AdamW rate for the untied embedding,
    warm-up-stable-decay; the loop keys shared with fine-tuning keep their gentler ``LoopConfig`` defaults
    there.
    """

    model: ModelConfig = ModelConfig()
    """The model's shape and options; ``vocab_size`` is taken from the tokenizer's meta.json."""
    canaries: CanaryConfig = CanaryConfig()
    """Secrets planted in the training data to measure memorisation (evaluate reports their exposure)."""
    optimizer: Literal["adamw", "muon"] = "muon"
    """``adamw`` for every parameter, or ``muon`` for the hidden weight matrices with AdamW for the
    embeddings, output head and norm gains."""
    embedding_lr: float | None = Field(0.03, gt=0)
    """Peak AdamW learning rate of the token embedding (None = ``lr``)."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay on weight matrices (off: short runs see each token only a few times)."""
    schedule: Literal["cosine", "wsd", "constant"] = "wsd"
    """Learning-rate shape after warm-up (see ``OptimConfig.schedule``)."""
    warmup_steps: int = Field(30, ge=0)
    """Linear warm-up from 0 over this many optimiser steps."""
    decay_frac: float = Field(0.6, ge=0, le=1)
    """``wsd``: the fraction of the run (by steps, or by time under a time budget) spent decaying."""
    min_lr_frac: float = Field(0.0, ge=0, le=1)
    """The learning rate at the end of the decay, as a fraction of the peak."""
    max_steps: int = Field(600, ge=0)
    """Optimiser steps to run (the schedule's length unless a time budget ends the run first); 600 steps
    of 32 x 128 tokens take about 5 minutes on 2 CPU cores with the default model."""
    eval_every: int = Field(200, ge=0)
    """Validate every this many steps (0 = only at the end)."""
    eval_tokens: int | None = Field(16384, ge=1)
    """Validation tokens used by periodic evaluations (None = the whole split); the final one uses all."""
    checkpoint_every: int = Field(200, ge=0)
    """Write a resumable checkpoint every this many steps (0 = only at the end)."""


LORA_TARGETS: tuple[str, ...] = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
"""The model's linear layers LoRA can adapt: the attention projections and the SwiGLU MLP's three."""


class LoraConfig(Config):
    """Low-rank adapters (LoRA) on the model's linear layers; the base weights stay frozen."""

    enabled: bool = False
    """Fine-tune low-rank adapters instead of every weight (far fewer trainable parameters and less
    optimiser memory)."""
    rank: int = Field(16, ge=1, le=1024)
    """Rank r of each adapter: A is [r, in], B is [out, r]; higher = more capacity, more parameters."""
    alpha: float = Field(32.0, gt=0, le=4096)
    """The update is scaled by alpha / rank, so the step size stays comparable when the rank changes."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapters' input (the frozen base path sees the input unchanged)."""
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1, max_length=7)
    """Names of the linear layers to adapt in every block: any of wq, wk, wv, wo, w_gate, w_up, w_down."""
    merge: bool = True
    """When saving, fold the adapters into the base weights and write an ordinary model directory (False:
    save the adapters on their own, beside the base model they need)."""

    @model_validator(mode="after")
    def _check_targets(self) -> LoraConfig:
        unknown = [t for t in self.target_modules if t not in LORA_TARGETS]
        if unknown:
            raise ValueError(f"unknown target_modules {unknown}; use any of {', '.join(LORA_TARGETS)}")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError(f"target_modules {self.target_modules} names a layer twice; list each once")
        return self


class FinetuneConfig(LoopConfig):
    """Supervised fine-tuning: the pre-training loop's keys, with defaults for a short, gentle run."""

    start_from: Literal["train", "base"] = "train"
    """The model to fine-tune: ``train`` (the one this run pre-trained) or ``base`` (the pretrained model the
    ``base`` stage imported, e.g. SmolLM2), each with its own tokenizer."""
    sample_prompts: list[str] = list(SAMPLE_PROMPTS)
    """Chat prompts answered (greedily) by the model before and after fine-tuning, shown side by side in
    the report."""
    sample_tokens: int = Field(48, ge=1)
    """Tokens generated per sample answer."""
    max_steps: int = Field(200, ge=0)
    """Optimiser steps to run (the schedule's length unless the time budget ends the run first)."""
    batch_size: int = Field(16, ge=1)
    """Conversations per optimiser step, over all processes and accumulation steps."""
    lr: float = Field(1e-3, gt=0)
    """Peak AdamW learning rate (lower than pre-training: the model already knows the language)."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay on weight matrices (off by default for a short fine-tune)."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warm-up from 0 over this many optimiser steps."""
    eval_every: int = Field(50, ge=0)
    """Chat validation loss every this many steps (0 = only at the end)."""
    eval_tokens: int | None = Field(None, ge=1)
    """Assistant tokens used by periodic chat validations (None = every val conversation)."""
    eval_batch_size: int = Field(16, ge=1)
    """Conversations per forward pass when validating."""
    checkpoint_every: int = Field(100, ge=0)
    """Write a resumable checkpoint every this many steps (0 = only at the end)."""
    lm_eval_tokens: int | None = Field(None, ge=0)
    """Tokens of tokenize's val.bin for the language-model bits per byte before and after fine-tuning
    (None = the same tokens the evaluate stage scores, so the numbers compare; 0 = skip)."""
    lora: LoraConfig = LoraConfig()
    """Low-rank adapters instead of full fine-tuning (``lora.enabled: true``); AdamW only."""
    synthetic: bool = True
    """Fine-tune on the synth stage's conversations (``synth/train.jsonl``; its ``val.jsonl`` measures the
    chat loss). False: only the ``chat_files``."""
    chat_files: list[str] = []
    """Your own chat data: JSONL files (paths, globs or ``pkg://``) of OpenAI-style records
    ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``, fine-tuned on alone
    (``synthetic: false``) or mixed with the synthetic conversations. A malformed record is counted and
    quarantined (``finetune/quarantine.jsonl``), not fatal."""
    chat_val_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of the ``chat_files`` conversations held out for the chat loss, chosen by a hash of the
    conversation (stable across runs and file order)."""
    seq_len: int | None = Field(None, ge=8)
    """Longest conversation in tokens (longer ones are cut); with ``packing``, the width of a packed row.
    None = the model's context (``block_size``), capped at 1024."""
    packing: bool = False
    """Pack several conversations into each row of ``seq_len`` tokens (positions restart and attention
    stays within each conversation, so each scores as if alone): fewer padding tokens, fewer steps per
    epoch. A step then holds ``batch_size`` rows, not conversations."""

    @model_validator(mode="after")
    def _check_lora(self) -> FinetuneConfig:
        if self.lora.enabled and self.optimizer != "adamw":
            raise ValueError("lora.enabled needs optimizer: adamw (Muon orthogonalises whole matrices, "
                             "not low-rank adapters)")
        if self.lora.enabled and self.distributed == "fsdp":
            raise ValueError("lora.enabled with distributed: fsdp is not supported; use distributed: ddp "
                             "(the frozen base is small next to full fine-tuning's optimiser state)")
        if self.dp.enabled and self.packing:
            raise ValueError("dp.enabled with packing: true is not supported (a packed row mixes several "
                             "conversations, so one row is not one record); set packing: false")
        if not self.synthetic and not self.chat_files:
            raise ValueError("synthetic: false leaves nothing to fine-tune on; name chat_files or set "
                             "synthetic: true")
        return self
