"""The same Llama weights under three names: Gristmill's state dict, Hugging Face transformers'
``LlamaForCausalLM`` and GGUF (llama.cpp), plus the one layout difference between them.

Import and export share this table so each name is spelled once. The layout difference: Gristmill and
transformers rotate the pairs (i, i + D/2) of each head's D dimensions, llama.cpp rotates adjacent pairs
(2i, 2i+1), so llama.cpp's converter reorders the rows of the query and key projections per head.
:func:`rotary_rows_to_gguf` applies that reordering and :func:`rotary_rows_from_gguf` undoes it; both
work on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Literal, TypeVar

Naming = Literal["gristmill", "hf", "gguf"]
NAMINGS: tuple[Naming, ...] = ("gristmill", "hf", "gguf")

GLOBAL_KEYS: tuple[tuple[str, str, str], ...] = (
    # (gristmill, hf, gguf)
    ("tok_emb.weight", "model.embed_tokens.weight", "token_embd.weight"),
    ("norm.weight", "model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "lm_head.weight", "output.weight"),  # absent when the embeddings are tied
)
"""Weights outside the blocks, as ``(gristmill, hf, gguf)`` names."""

LAYER_KEYS: tuple[tuple[str, str, str], ...] = (
    ("blocks.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"),
    ("blocks.{i}.attn.wq.weight", "model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight"),
    ("blocks.{i}.attn.wk.weight", "model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight"),
    ("blocks.{i}.attn.wv.weight", "model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight"),
    ("blocks.{i}.attn.wo.weight", "model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight"),
    ("blocks.{i}.mlp_norm.weight", "model.layers.{i}.post_attention_layernorm.weight",
     "blk.{i}.ffn_norm.weight"),
    ("blocks.{i}.mlp.w_gate.weight", "model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
    ("blocks.{i}.mlp.w_up.weight", "model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
    ("blocks.{i}.mlp.w_down.weight", "model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
)
"""Weights of block ``{i}``, as ``(gristmill, hf, gguf)`` name templates."""

QUERY_KEY, KEY_KEY = "blocks.{i}.attn.wq.weight", "blocks.{i}.attn.wk.weight"
"""Gristmill templates of the two projections whose rows GGUF stores in llama.cpp's rotary order."""


@cache
def _patterns(naming: Naming) -> tuple[tuple[re.Pattern[str], int], ...]:
    """One anchored regex per row of the tables (``{i}`` -> a layer number), with the row's index."""
    col = NAMINGS.index(naming)
    rows = GLOBAL_KEYS + LAYER_KEYS
    return tuple((re.compile(re.escape(row[col]).replace(r"\{i\}", r"(\d+)") + "$"), n)
                 for n, row in enumerate(rows))


def rename(name: str, src: Naming, dst: Naming) -> str | None:
    """``name`` (spelled as ``src`` spells it) as ``dst`` spells it; None if it is no Llama weight here."""
    rows = GLOBAL_KEYS + LAYER_KEYS
    for pattern, n in _patterns(src):
        m = pattern.match(name)
        if m:
            target = rows[n][NAMINGS.index(dst)]
            return target.format(i=m.group(1)) if m.groups() else target
    return None


def template(name: str, naming: Naming = "gristmill") -> str | None:
    """The table's template for ``name`` (``blocks.3.attn.wq.weight`` -> ``blocks.{i}.attn.wq.weight``)."""
    for pattern, n in _patterns(naming):
        if pattern.match(name):
            return (GLOBAL_KEYS + LAYER_KEYS)[n][NAMINGS.index(naming)]
    return None


Array = TypeVar("Array")  # a numpy array or a torch tensor: both have .shape, .reshape and .swapaxes


def rotary_rows_to_gguf(w: Array, n_heads: int) -> Array:
    """Rows of a query/key projection [n_heads*D, C] from Gristmill/HF order (per head: the D/2 first-half
    rows, then the D/2 second-half rows) to llama.cpp's (per head: first/second half interleaved).

    ``n_heads`` is the number of query heads for the query projection and of key/value heads for the key.
    """
    shape = tuple(w.shape)
    half = shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *shape[1:]).swapaxes(1, 2).reshape(shape)


def rotary_rows_from_gguf(w: Array, n_heads: int) -> Array:
    """The inverse of :func:`rotary_rows_to_gguf`: llama.cpp's interleaved rows back to (first half,
    second half) per head, the order Gristmill's ``apply_rotary`` expects."""
    shape = tuple(w.shape)
    half = shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
