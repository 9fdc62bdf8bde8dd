"""Weight formats for inference: the model's fp32 weights, bf16 copies, or int8 with one scale per output row.

Decoding one token reads every weight once, so on a CPU its speed is set by bytes per weight: fp32 reads
4, bf16 2, int8 1 (plus a scale per row). The engine packs each block's projections for the format it
runs (q/k/v as one matrix, gate/up as one, fewer and larger matrix products) and leaves the model
itself untouched: training, evaluation and fine-tuning keep their fp32 weights.

* ``fp32``: the model's own modules (LoRA layers included); the reference.
* ``bf16``: weights and matrix inputs in bfloat16 (AMX / AVX-512 BF16 on recent CPUs, tensor cores on GPUs),
  the residual stream in fp32.
* ``int8``: weight-only: ``w ≈ q * s`` with ``q`` int8 in [-127, 127] and ``s = max|w_row| / 127`` for each
  output row; inputs in bfloat16, through torch's CPU kernel ``_weight_int8pack_mm`` (CPU only). The
  fastest single stream; slower than bf16 for batches (the kernel is a matrix-vector product), and on
  SmolLM2-135M its perplexity is 0.1-1.9% above fp32's where bf16's is within 0.2%
  (benchmarks/decode_speed.py).
* ``int4``: the blocks weight-only int4 in groups of :data:`INT4_GROUP` inputs: ``w ≈ (q - 8) * s + z`` with
  ``q`` in [0, 15] and a scale and offset per group spanning its min..max, through
  ``_weight_int4pack_mm_for_cpu`` (CPU only); the output head int8 (int4 there costs SmolLM2 +5% perplexity).
  Half int8's bytes, and faster than int8 for batches too. Lossless up to bf16 scales on weights that were
  4-bit in such groups already (a Q4_0/Q4_1 GGUF: SmolLM2-135M +0.5% perplexity, the int8 head's), coarse
  on weights trained in full precision: ``auto`` keeps it only if its perplexity holds.

Shapes: N output features, K input features, M rows (tokens) fed at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHT_FORMATS = ("fp32", "bf16", "int8", "int4")
"""Formats the engine can run; ``auto`` (see ``engine.resolve_weights``) picks one of them."""


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 of ``weight`` [N,K]: (q [N,K] int8, scales [N] float32), ``weight ≈ q * scales[:, None]``."""
    w = weight.detach().float()
    # an all-zero row gets scale 1 (its q is 0 anyway) rather than a division by zero
    scales = (w.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


INT4_GROUP = 32
"""Inputs sharing one int4 scale and offset (the Q4_0/Q4_1 GGUF block size)."""


def quantize_int4(weight: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 of ``weight`` [N,K] in groups of ``group`` inputs: (q [N,K] int32 in [0, 15],
    scales_and_zeros [K/group, N, 2] float32) with ``weight ≈ (q - 8) * scale + zero`` per group."""
    N, K = weight.shape
    g = weight.detach().float().reshape(N, K // group, group)
    lo, hi = g.amin(dim=-1, keepdim=True), g.amax(dim=-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round((g - lo) / scale).clamp_(0, 15).to(torch.int32).reshape(N, K)
    zero = lo + 8 * scale  # the kernel centres q on 8
    return q, torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous()  # [K/group, N, 2]


def check_format(fmt: str, device: torch.device) -> None:
    """Raise ValueError if weight format ``fmt`` cannot run on ``device``."""
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)} (or auto), got {fmt!r}")
    if fmt in ("int8", "int4") and device.type != "cpu":
        raise ValueError(f"weights {fmt} runs on the CPU only (torch has no {fmt} weight kernel for "
                         f"{device.type}); use bf16 there")


class PackedLinear:
    """``y = x @ w.T`` with ``w`` [N,K] stored in one of the weight formats; outputs are float32 for fp32,
    bf16 for the others."""

    def __init__(self, weight: torch.Tensor, fmt: str):
        self.fmt, self.out_features = fmt, weight.size(0)
        w = weight.detach()
        if fmt == "fp32":
            self.weight, self.scales = w, None
        elif fmt == "bf16":
            self.weight, self.scales = w.to(torch.bfloat16).contiguous(), None
        elif fmt == "int8":
            q, s = quantize_int8(w)
            self.weight, self.scales = q, s.to(torch.bfloat16)  # the kernel wants scales in the input's dtype
        elif fmt == "int4":
            if w.size(1) % INT4_GROUP or w.size(0) % 16:  # the kernel's layout needs both
                raise ValueError(f"weights int4 need input widths divisible by {INT4_GROUP} and output widths by "
                                 f"16, this model has a {w.size(0)}x{w.size(1)} matrix; use int8 or bf16")
            q, sz = quantize_int4(w)
            self.weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)  # [N, K/2] uint8, two per byte
            self.scales = sz.to(torch.bfloat16)
        else:
            raise ValueError(f"unknown weight format {fmt!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] -> [..., N]."""
        if self.fmt == "fp32":
            return F.linear(x, self.weight)
        x = x.to(torch.bfloat16)
        if self.fmt == "bf16":
            # One row (single-stream decode): oneDNN's bf16 matrix product is slower than fp32's at one row,
            # its matrix-vector product ~1.5x faster.
            if x.numel() == x.size(-1):
                return torch.mv(self.weight, x.reshape(-1)).view(*x.shape[:-1], -1)
            return F.linear(x, self.weight)
        if x.dim() != 2:  # the kernels take 2-D inputs only (decoding feeds them so: no reshape per call)
            return self(x.reshape(-1, x.size(-1))).view(*x.shape[:-1], -1)
        if self.fmt == "int8":
            return torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scales)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.weight, INT4_GROUP, self.scales)

    def nbytes(self) -> int:
        """Bytes of the stored weight and scales (0 for fp32: those are the model's own)."""
        if self.fmt == "fp32":
            return 0
        return self.weight.numel() * self.weight.element_size() + (
            self.scales.numel() * self.scales.element_size() if self.scales is not None else 0)


class PackedBlock:
    """One transformer block's weights as the engine runs them: ``qkv(h)`` [..., (H+2K)D], ``wo(y)``,
    ``mlp(h)``, with the block's norms. fp32 (the only format for blocks with LoRA layers) calls the block's
    own modules; the other formats run fused q/k/v and gate/up matrices."""

    def __init__(self, block: nn.Module, fmt: str):
        a, m = block.attn, block.mlp
        self.fmt = fmt
        self.attn_norm, self.mlp_norm = block.attn_norm, block.mlp_norm
        self.q_norm, self.k_norm = a.q_norm, a.k_norm
        self.n_head, self.n_kv, self.hd = a.n_head, a.n_kv, a.hd
        self.packed: list[PackedLinear] = []
        linears = (a.wq, a.wk, a.wv, a.wo, m.w_gate, m.w_up, m.w_down)
        if fmt == "fp32" or not all(type(x) is nn.Linear for x in linears):
            if fmt != "fp32":
                raise ValueError(f"weights {fmt} need plain linear layers; merge the LoRA adapter into the base "
                                 f"weights first (serve.merge_adapter: true) or serve with weights fp32")
            self.qkv: Callable[[torch.Tensor], torch.Tensor] = lambda h: torch.cat([a.wq(h), a.wk(h), a.wv(h)], -1)
            self.wo: Callable[[torch.Tensor], Any] = a.wo
            self.mlp: Callable[[torch.Tensor], torch.Tensor] = m
            return
        qkv = PackedLinear(torch.cat([a.wq.weight, a.wk.weight, a.wv.weight]), fmt)  # [(H+2K)D, C]
        gate_up = PackedLinear(torch.cat([m.w_gate.weight, m.w_up.weight]), fmt)  # [2F, C]
        wo, down = PackedLinear(a.wo.weight, fmt), PackedLinear(m.w_down.weight, fmt)
        hidden = m.w_gate.out_features

        def mlp(h: torch.Tensor) -> torch.Tensor:
            g, u = gate_up(h).split(hidden, dim=-1)
            return down(F.silu(g) * u)

        self.qkv, self.wo, self.mlp = qkv, wo, mlp
        self.packed = [qkv, gate_up, wo, down]


def head_format(fmt: str) -> str:
    """The output head's format for weight format ``fmt``: int4 keeps the head in int8 (the largest matrix,
    and the one whose error reaches the logits directly)."""
    return "int8" if fmt == "int4" else fmt
