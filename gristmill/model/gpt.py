"""The model: one Llama-style decoder-only transformer, readable top to bottom.

Pre-norm blocks with RMSNorm, rotary position embeddings, grouped-query attention through PyTorch's fused
``scaled_dot_product_attention``, and a SwiGLU MLP. Options (tied embeddings, QK-norm, logit soft-capping,
dropout) are flags on this one model. Sampling lives in ``gristmill.inference``; the model directory
(weights, config, tokenizer) in ``gristmill.model.io``.

Shapes in comments: B batch, T time (tokens fed now), L cached length, C n_embd, H query heads,
K key/value heads, D head dim, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gristmill.model.config import ModelConfig
from gristmill.model.head_loss import head_loss


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the gain in the input's dtype (bf16 activations under autocast): the fused kernel needs one dtype
        return F.rms_norm(x, (x.size(-1),), self.weight.to(x.dtype), self.eps)


def segment_layout(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and attention mask of packed rows. segments [B,T]: a segment id per token; a new segment
    starts wherever the id differs from the previous token's (so ids only need to differ between
    neighbours). Returns positions [B,T] (0 at each segment's first token) and a boolean mask [B,1,T,T]
    (True = may attend): causal, and only within the query's own segment.
    """
    B, T = segments.shape
    t = torch.arange(T, device=segments.device)
    new = torch.ones_like(segments, dtype=torch.bool)
    new[:, 1:] = segments[:, 1:] != segments[:, :-1]  # [B,T] first token of a segment
    starts = torch.where(new, t, 0).cummax(dim=1).values  # [B,T] index of the segment's first token
    run = new.cumsum(dim=1)  # [B,T] running segment number: equal ids far apart stay apart
    causal = t[None, :] <= t[:, None]  # [T,T] key <= query
    mask = (run[:, :, None] == run[:, None, :]) & causal  # [B,T,T]
    return t - starts, mask[:, None]


def rotary_tables(length: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [length, head_dim/2] (float32) for positions 0..length-1."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the head dim. x: [B,T,H,D]; cos, sin: [T, D/2] (one
    position per time step) or [B,T,D/2] (per row: packed rows restart positions in each segment)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    if cos.dim() == 2:
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    else:
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class KVCache:
    """Keys and values of the tokens fed so far, for incremental decoding.

    ``pos`` is the number of tokens already in the cache; each forward call appends T tokens at
    positions pos..pos+T-1 and advances ``pos`` once all layers have run.
    """

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ([B,K,T,D]) at the current position; return all keys/values so far [B,K,pos+T,D]."""
        t = k.size(2)
        if self.pos + t > self.max_len:
            raise ValueError(f"KV cache is full: {self.pos} + {t} tokens > max_len {self.max_len}")
        self.k[layer, :, :, self.pos:self.pos + t] = k
        self.v[layer, :, :, self.pos:self.pos + t] = v
        return self.k[layer, :, :, :self.pos + t], self.v[layer, :, :, :self.pos + t]

    def reset(self) -> None:
        self.pos = 0


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.n_embd, self.n_head * self.hd, bias=False)
        self.wk = nn.Linear(cfg.n_embd, self.n_kv * self.hd, bias=False)
        self.wv = nn.Linear(cfg.n_embd, self.n_kv * self.hd, bias=False)
        self.wo = nn.Linear(self.n_head * self.hd, cfg.n_embd, bias=False)
        self.q_norm = RMSNorm(self.hd, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.hd, cfg.norm_eps) if cfg.qk_norm else None
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, segment_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.hd)  # [B,T,H,D]
        k = self.wk(x).view(B, T, self.n_kv, self.hd)  # [B,T,K,D]
        v = self.wv(x).view(B, T, self.n_kv, self.hd)  # [B,T,K,D]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B,H|K,T,D]
        mask, causal = None, True
        if cache is not None:
            start = cache.pos
            k, v = cache.update(self.layer, k, v)  # [B,K,L,D] with L = start + T
            if start > 0:  # query i (absolute position start+i) sees keys 0..start+i
                causal = False
                if T > 1:
                    mask = torch.arange(k.size(2), device=x.device)[None, :] <= (
                        start + torch.arange(T, device=x.device)[:, None])  # [T,L]
        if segment_mask is not None:  # packed rows: causal within each segment ([B,1,T,T], no cache)
            mask, causal = segment_mask, False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.attn_dropout if self.training else 0.0,
            enable_gqa=self.n_kv != self.n_head,
        )  # [B,H,T,D]
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.hd)  # [B,T,C]
        return self.resid_dropout(self.wo(y))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.n_embd, cfg.hidden, bias=False)
        self.w_up = nn.Linear(cfg.n_embd, cfg.hidden, bias=False)
        self.w_down = nn.Linear(cfg.hidden, cfg.n_embd, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w_down(F.silu(self.w_gate(x)) * self.w_up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, segment_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, segment_mask)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.emb_dropout = nn.Dropout(config.embd_dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        # Tied: the head reuses tok_emb.weight, so there is no separate parameter (and nothing shared
        # in the state dict, which safetensors would refuse).
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        cos, sin = rotary_tables(config.block_size, config.head_dim, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.checkpoint_blocks = 0
        """Activation checkpointing, training only: this many blocks (from the first) keep just their input
        and recompute their activations in backward, trading one more forward pass of each for most of its
        activation memory (LoRA on SmolLM2-135M, batch 8 x 256, all 30 blocks: peak 4.4 -> 2.4 GB, ~30%
        slower; benchmarks/lora_smollm2.py). A training choice, not the model's shape: not in config.json."""
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("wo.weight", "w_down.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _rotary(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + length
        if end > self.rope_cos.size(0):  # generation past block_size: grow the tables
            cos, sin = rotary_tables(max(end, 2 * self.rope_cos.size(0)), self.config.head_dim,
                                     self.config.rope_theta)
            self.rope_cos, self.rope_sin = cos.to(self.rope_cos.device), sin.to(self.rope_sin.device)
        return self.rope_cos[start:end], self.rope_sin[start:end]

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for ``batch`` sequences of up to ``max_len`` tokens (default block_size)."""
        p = self.tok_emb.weight
        return KVCache(self.config.n_layer, batch, self.config.kv_heads, max_len or self.config.block_size,
                       self.config.head_dim, p.device, p.dtype)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, segments: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx [B,T] token ids -> (logits [B,T,V], None) without targets; with targets [B,T]
        (-100 = ignored), (None, mean cross-entropy over the others): the loss path never builds the
        [B,T,V] logits (see ``head_loss``).

        ``segments`` [B,T] (packed rows, see ``segment_layout``): each segment is an independent
        sequence, with positions restarting at 0 and attention confined to it, so a packed row scores
        like its samples run one by one. Not for incremental decoding (no cache).
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        mask = None
        if segments is None:
            cos, sin = self._rotary(start, T)  # [T, D/2]
        else:
            if cache is not None:
                raise ValueError("segments (packed rows) cannot be combined with a KV cache; decode without them")
            if segments.shape != idx.shape:
                raise ValueError(f"segments has shape {tuple(segments.shape)}, idx {tuple(idx.shape)}: "
                                 f"give one segment id per token")
            pos, mask = segment_layout(segments)  # [B,T], [B,1,T,T]
            cos, sin = self._rotary(0, T)
            cos, sin = cos[pos], sin[pos]  # [B,T,D/2]
        x = self.emb_dropout(self.tok_emb(idx))  # [B,T,C]
        recompute = self.checkpoint_blocks if self.training and torch.is_grad_enabled() and cache is None else 0
        for i, block in enumerate(self.blocks):
            if i < recompute:
                x = checkpoint(block, x, cos, sin, None, mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, cache) if mask is None else block(x, cos, sin, segment_mask=mask)
        if cache is not None:
            cache.pos += T
        if targets is not None:
            weight = self.lm_head.weight if self.lm_head is not None else self.tok_emb.weight  # [V,C]
            return None, head_loss(self.norm(x).reshape(B * T, -1), weight, targets.reshape(-1),
                                   self.config.logit_softcap)
        return self.logits(x), None

    def hidden(self, idx: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor | None = None
               ) -> torch.Tensor:
        """The last block's output [B,T,C] (before the final norm) for token ids [B,T] at explicit
        ``positions`` [B,T] with a boolean ``attn_mask`` [B,1,T,T] (True = may attend; None = causal):
        what scoring many short, padded requests in one batch needs (:mod:`gristmill.eval.harness`).
        ``logits(hidden(...))`` is ``forward``'s output for the same layout."""
        self._rotary(0, int(positions.max()) + 1 if positions.numel() else 1)  # grow the tables if needed
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # [B,T,D/2]
        x = self.tok_emb(idx)  # [B,T,C]
        for block in self.blocks:
            x = block(x, cos, sin, segment_mask=attn_mask)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] of last-block outputs [..., C]: the final norm, the output head, the soft-cap."""
        weight = self.lm_head.weight if self.lm_head is not None else self.tok_emb.weight  # [V,C]
        logits = F.linear(self.norm(x), weight)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP/FSDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model
