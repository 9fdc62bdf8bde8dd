"""The model: one Llama-style decoder-only transformer, readable top to bottom.

Pre-norm blocks with RMSNorm, rotary position embeddings, grouped-query attention through PyTorch's fused
``scaled_dot_product_attention``, and a SwiGLU MLP. Options (tied embeddings, QK-norm, logit soft-capping,
dropout) are flags on this one model. A model directory holds ``model.safetensors``, ``config.json`` (the
``ModelConfig`` fields) and ``tokenizer.json``; ``save_model`` / ``load_model`` write and read it.

Shapes in comments: B batch, T time (tokens fed now), L cached length, C n_embd, H query heads,
K key/value heads, D head dim, V vocab.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import model_validator

from gristmill.config import Config
from gristmill.errors import InputError
from gristmill.workspace import atomic_open, write_json

IGNORE_INDEX = -100


class ModelConfig(Config):
    """Shape and options of the transformer; saved as ``config.json`` in every model directory."""

    vocab_size: int = 4096
    """Number of token ids; the train stage sets it from the tokenizer's ``meta.json``."""
    block_size: int = 128
    """Longest context in tokens the model is trained on (rotary tables extend past it for generation)."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 2
    """Number of query heads; ``n_embd`` must be divisible by it."""
    n_kv_head: int | None = None
    """Number of key/value heads for grouped-query attention (None = ``n_head``, i.e. plain multi-head)."""
    n_embd: int = 128
    """Width of the residual stream."""
    mlp_hidden: int | None = None
    """Hidden width of the SwiGLU MLP (None = 8/3 x n_embd rounded up to a multiple of 32)."""
    dropout: float = 0.0
    """Dropout on each residual branch's output (attention and MLP)."""
    attn_dropout: float = 0.0
    """Dropout on attention probabilities."""
    embd_dropout: float = 0.0
    """Dropout on the token embeddings."""
    tie_embeddings: bool = False
    """Share the token embedding matrix with the output head."""
    qk_norm: bool = False
    """RMS-normalise queries and keys per head before the rotary embedding (stabilises high learning rates)."""
    logit_softcap: float | None = 30.0
    """If set, logits are squashed to (-cap, cap) with cap * tanh(logits / cap) (None = off)."""
    rope_theta: float = 10000.0
    """Base of the rotary embedding frequencies."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    init_std: float = 0.02
    """Standard deviation of the normal weight init (output projections are scaled by 1/sqrt(2 n_layer))."""

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        n_kv = self.n_kv_head or self.n_head
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % n_kv:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({n_kv})")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError("the head dim n_embd / n_head must be even for rotary embeddings")
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 32 * math.ceil(8 * self.n_embd / 3 / 32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def rotary_tables(length: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [length, head_dim/2] (float32) for positions 0..length-1."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the head dim. x: [B,T,H,D]; cos, sin: [T, D/2]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class _HeadLoss(torch.autograd.Function):
    """Output head, soft-cap and cross-entropy in one pass over row chunks, gradients included.

    The plain path materialises [N,V] logits and walks them a dozen times (matmul, divide, tanh,
    multiply, log-softmax, gather, and the backward of each, plus a zero-filled gradient), so on a CPU
    the head costs more than the transformer below it. Here each chunk of rows is small enough to stay
    in cache: its logits, loss and logit gradient are computed together, then folded into the gradients
    of x and the weight at once. The [N,V] tensor never exists; backward only scales what forward kept.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None,
                chunk: int, grad_enabled: bool) -> torch.Tensor:
        # x [N,C], weight [V,C], targets [N] (IGNORE_INDEX = no loss); returns the mean loss over targets.
        # needs_input_grad only looks at requires_grad, which parameters keep under torch.no_grad, so the
        # caller's grad mode (off inside forward) comes in as grad_enabled: evaluation skips the gradients.
        want_x, want_w = (grad_enabled and ctx.needs_input_grad[i] for i in (0, 1))
        valid = targets != IGNORE_INDEX
        scale = 1.0 / valid.sum().clamp_min(1).float()
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if want_x else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        for s in range(0, x.size(0), chunk):
            xc, vc = x[s:s + chunk], valid[s:s + chunk]
            tc = targets[s:s + chunk].clamp_min(0)[:, None]  # [R,1]; ignored rows are masked below
            z = (xc @ weight.t()).float()  # [R,V]
            if softcap:
                t = z.div_(softcap).tanh_()  # z now holds tanh(logits / cap)
                z = t * softcap
            lse = torch.logsumexp(z, dim=-1)  # [R]
            total += ((lse - z.gather(1, tc)[:, 0]) * vc).sum()
            if not (want_x or want_w):
                continue
            # d loss / d logits = softmax - one_hot, per valid row, times d capped / d raw = 1 - tanh^2
            g = z.sub_(lse[:, None]).exp_()
            g.scatter_add_(1, tc, torch.full_like(g[:, :1], -1.0))
            g.mul_((vc * scale)[:, None])
            if softcap:
                g.mul_(t.square_().neg_().add_(1.0))
            g = g.to(x.dtype)
            if want_x:
                grad_x[s:s + chunk] = g @ weight
            if want_w:
                grad_w += g.t() @ xc
        ctx.save_for_backward(grad_x, grad_w)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_x, grad_w = ctx.saved_tensors
        gx = grad_x * grad_out if grad_x is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gx, gw, None, None, None, None


def head_loss(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None,
              chunk_bytes: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``softcap(x @ weight.T)`` against ``targets`` (-100 = ignored), without
    materialising the logits. x [N,C], weight [V,C], targets [N]. Rows go in chunks of ~``chunk_bytes``
    of float32 logits: by default 1 MiB on a CPU (stays in a core's L2 cache), 256 MiB on a GPU (few,
    large kernels; torch.compile traces the chunk loop unrolled)."""
    if chunk_bytes is None:
        chunk_bytes = 1 << 20 if x.device.type == "cpu" else 256 << 20
    chunk = max(1, chunk_bytes // (4 * weight.size(0)))
    return _HeadLoss.apply(x, weight, targets, softcap, chunk, torch.is_grad_enabled())


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
                cache: KVCache | None = None) -> torch.Tensor:
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
                cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
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
                cache: KVCache | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx [B,T] token ids -> (logits [B,T,V], None) without targets; with targets [B,T]
        (-100 = ignored), (None, mean cross-entropy over the others): the loss path never builds the
        [B,T,V] logits (see ``head_loss``)."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        cos, sin = self._rotary(start, T)  # [T, D/2]
        x = self.emb_dropout(self.tok_emb(idx))  # [B,T,C]
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.pos += T
        x = self.norm(x)
        weight = self.lm_head.weight if self.lm_head is not None else self.tok_emb.weight  # [V,C]
        cap = self.config.logit_softcap
        if targets is not None:
            return None, head_loss(x.reshape(B * T, -1), weight, targets.reshape(-1), cap)
        logits = F.linear(x, weight)  # [B,T,V]
        if cap:
            logits = cap * torch.tanh(logits / cap)
        return logits, None

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, stop_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample up to ``max_new_tokens`` after the prompt idx [B,T] with the KV cache; returns [B,T+N].

        Temperature 0 is greedy. Sequences that produced ``stop_id`` keep emitting it.
        """
        B, T = idx.shape
        cache = self.new_cache(B, T + max_new_tokens)
        logits, _ = self(idx, cache=cache)
        out, done = [idx], torch.zeros(B, dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            last = logits[:, -1, :].float()  # [B,V]
            if temperature <= 0:
                nxt = last.argmax(-1, keepdim=True)
            else:
                last = last / temperature
                if top_k is not None and top_k < last.size(-1):
                    kth = torch.topk(last, top_k).values[:, -1:]
                    last = last.masked_fill(last < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(last, dim=-1), 1, generator=generator)  # [B,1]
            if stop_id is not None:
                nxt = torch.where(done[:, None], torch.full_like(nxt, stop_id), nxt)
                done |= nxt[:, 0] == stop_id
            out.append(nxt)
            if stop_id is not None and bool(done.all()):
                break
            logits, _ = self(nxt, cache=cache)
        return torch.cat(out, dim=1)


# ----------------------------------------------------------------------------------------------------
# Model directory: model.safetensors + config.json + tokenizer.json


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP/FSDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def save_model(model_dir: Path, model: nn.Module, tokenizer_path: Path | None) -> None:
    """Write a self-contained model directory (weights, config, a copy of the tokenizer)."""
    from safetensors.torch import save

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    gpt = unwrap(model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in gpt.state_dict().items()}
    with atomic_open(model_dir / "model.safetensors", "wb") as f:
        f.write(save(tensors, metadata={"format": "pt"}))
    write_json(model_dir / "config.json", gpt.config.model_dump(mode="json"))
    if tokenizer_path is not None:
        src = Path(tokenizer_path)
        if src.resolve() != (model_dir / "tokenizer.json").resolve():
            with atomic_open(model_dir / "tokenizer.json", "wb") as f, open(src, "rb") as g:
                shutil.copyfileobj(g, f)


def load_model(model_dir: Path, device: str | torch.device = "cpu") -> GPT:
    """Read a model directory written by ``save_model``; InputError if it is missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    cfg_path, w_path = model_dir / "config.json", model_dir / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise InputError(f"{model_dir} is not a model directory: {p.name} is missing "
                             f"(train a model first, or point at a folder written by save_model)")
    try:
        cfg = ModelConfig.model_validate(json.loads(cfg_path.read_text(encoding="utf-8")))
    except ValueError as e:
        raise InputError(f"{cfg_path} is not a valid model config ({str(e).splitlines()[0]})") from e
    try:
        state = load_file(str(w_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{w_path} is corrupt or truncated ({e}); re-run the stage that wrote it") from e
    model = GPT(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{w_path} does not match {cfg_path} ({str(e).splitlines()[0]})") from e
    return model.to(device).eval()
