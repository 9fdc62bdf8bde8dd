"""Export a model as a Hugging Face transformers folder of the ``llama`` architecture, loadable with
``AutoModelForCausalLM.from_pretrained(folder)`` and ``AutoTokenizer.from_pretrained(folder)`` without
remote code.

Transformers' Llama rotates the same (first half, second half) pairs of each head as Gristmill, so the
weights are only renamed (``keys``); with tied embeddings the folder has no ``lm_head.weight`` and
``tie_word_embeddings`` makes transformers reuse the embedding. The folder is written with json,
safetensors and tokenizers only: transformers is needed to load it, not to write it.

Files: ``config.json`` (``LlamaForCausalLM``; ``rope_theta`` both at the top level, where transformers 4
reads it, and in ``rope_parameters``, where transformers 5 keeps it), ``generation_config.json`` (every
stop id), ``model.safetensors``, ``tokenizer.json`` (byte for byte the model's), ``tokenizer_config.json``
(the chat template, bos/eos/pad) and ``special_tokens_map.json``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.model.convert.keys import rename

if TYPE_CHECKING:
    from gristmill.model.convert.exported import ExportSource

HF_DTYPES = ("float32", "float16", "bfloat16")
"""Weight dtypes the folder can be written in."""

HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "special_tokens_map.json", "tokenizer_config.json")
"""Every file :func:`export_hf` writes, in the order it writes them."""


def export_hf(source: ExportSource, out_dir: Path, *, dtype: str = "float32") -> dict[str, int]:
    """Write ``source`` as a transformers Llama folder in ``out_dir``; returns {file name: bytes}.

    Each file is written atomically, so a crash leaves no half-written file, only a folder missing its
    last files (``tokenizer_config.json`` is the last).
    """
    import torch
    from safetensors.torch import save

    from gristmill.core.workspace import atomic_open, write_json

    if dtype not in HF_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(HF_DTYPES)}, got {dtype!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    write_json(out_dir / "config.json", hf_config(source, dtype))
    write_json(out_dir / "generation_config.json", {
        "bos_token_id": source.bos_id,
        "eos_token_id": list(source.stop_ids),
        "pad_token_id": source.pad_id,
    })

    torch_dtype = getattr(torch, dtype)
    tensors = {}
    for name, w in source.model.state_dict().items():
        hf_name = rename(name, "gristmill", "hf")
        if hf_name is None:  # load_source refused every option whose weights Llama lacks
            raise AssertionError(f"no transformers name for the weight {name}")
        tensors[hf_name] = w.detach().to("cpu", torch_dtype).contiguous()
    with atomic_open(out_dir / "model.safetensors", "wb") as f:
        f.write(save(tensors, metadata={"format": "pt"}))

    with atomic_open(out_dir / "tokenizer.json", "wb") as f, \
            open(source.model_dir / "tokenizer.json", "rb") as g:
        shutil.copyfileobj(g, f)
    specials = {"bos_token": source.token(source.bos_id), "eos_token": source.token(source.eos_id),
                "pad_token": source.token(source.pad_id)}
    write_json(out_dir / "special_tokens_map.json", specials)
    write_json(out_dir / "tokenizer_config.json", {
        # the tokenizer.json as it is: no class that would rebuild it from a vocabulary file
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "unk_token": None,
        "add_bos_token": source.add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # byte-level BPE decodes to the exact text; do not touch it
        "model_max_length": source.config.block_size,
        "chat_template": source.chat_template,
    })
    return {name: (out_dir / name).stat().st_size for name in HF_FILES}


def hf_config(source: ExportSource, dtype: str = "float32") -> dict[str, Any]:
    """The ``config.json`` of a transformers ``LlamaForCausalLM`` that computes what ``source.model`` does
    (up to the dropped soft-cap, see ``exported``)."""
    c = source.config
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "intermediate_size": c.hidden,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.block_size,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "tie_word_embeddings": c.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": c.init_std,
        "bos_token_id": source.bos_id,
        "eos_token_id": source.eos_id,
        "pad_token_id": source.pad_id,
        "dtype": dtype,
        "use_cache": True,
    }
