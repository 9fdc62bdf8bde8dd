"""Import a Hugging Face transformers folder of a Llama-architecture model (``config.json``,
``model.safetensors`` or its shards, ``tokenizer.json``).

Transformers' Llama rotates the same (first half, second half) pairs as Gristmill, so the weights are
only renamed (see ``keys``) and cast to float32; the tokenizer file is already a ``tokenizers`` JSON.
Reading needs ``safetensors`` and ``tokenizers`` only, not transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.errors import InputError
from gristmill.model.convert.keys import rename

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from gristmill.model.gpt import GPT

MODEL_TYPES = ("llama",)
"""``model_type`` values in ``config.json`` that this importer reads."""

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # old checkpoints saved this buffer; it is recomputed


def import_hf(folder: Path) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """The model, tokenizer and import info of a transformers Llama folder.

    ``info`` holds the chat template (from ``tokenizer_config.json`` or ``chat_template.jinja``, None if
    neither has one), the bos/eos/pad ids of ``config.json``, the source dtype and the sha256 of each
    weight file. Raises InputError for a missing file, another architecture or an unsupported option
    (rope scaling, biases, an activation other than SiLU).
    """
    import torch
    from tokenizers import Tokenizer

    from gristmill.core.workspace import sha256_file
    from gristmill.model.convert.imported import build_model, llama_config

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{cfg_path} does not exist; pass a transformers folder of a Llama model "
                         f"(config.json, model.safetensors, tokenizer.json)")
    hf = _read_json(cfg_path)
    _check_llama(hf, cfg_path)

    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise InputError(f"{tok_path} does not exist; only models with a fast-tokenizer tokenizer.json "
                         f"can be imported")
    try:
        tokenizer = Tokenizer.from_file(str(tok_path))
    except Exception as e:  # the Rust library raises a plain Exception for unreadable files
        raise InputError(f"{tok_path} is not a valid tokenizer file ({e})") from e

    n_embd, n_head = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    if int(hf.get("head_dim") or n_embd // n_head) * n_head != n_embd:
        raise InputError(f"{cfg_path} sets head_dim = {hf['head_dim']}, but Gristmill's model needs "
                         f"hidden_size / num_attention_heads = {n_embd // n_head}")
    rope = hf.get("rope_parameters") or {}  # transformers >= 5 keeps rope_theta in here
    cfg = llama_config(
        cfg_path, vocab_size=int(hf["vocab_size"]), context_length=int(hf["max_position_embeddings"]),
        n_layer=int(hf["num_hidden_layers"]), n_head=n_head,
        n_kv_head=int(hf.get("num_key_value_heads") or n_head), n_embd=n_embd,
        mlp_hidden=int(hf["intermediate_size"]),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )

    files = _weight_files(folder)
    state: dict[str, torch.Tensor] = {}
    dtypes: set[str] = set()
    for f in files:
        for key, w in _load_safetensors(f).items():
            if key.endswith(_IGNORED_SUFFIXES):
                continue
            if key == "lm_head.weight" and cfg.tie_embeddings:
                continue  # some writers store the tied head too; the model reuses the embedding
            name = rename(key, "hf", "gristmill")
            if name is None:
                raise InputError(f"{f} has a weight {key} that a plain Llama model does not have; only "
                                 f"Llama models without biases or extra norms are supported")
            dtypes.add(str(w.dtype).removeprefix("torch."))
            state[name] = w.to(torch.float32)
    model = build_model(cfg, state, files[0] if len(files) == 1 else folder)

    if tokenizer.get_vocab_size() > cfg.vocab_size:
        raise InputError(f"{tok_path} has {tokenizer.get_vocab_size()} tokens but {cfg_path} sets vocab_size "
                         f"= {cfg.vocab_size}; the tokenizer does not belong to this model")

    info: dict[str, Any] = {
        "format": "hf",
        "source": folder.name,
        "sha256": {f.name: sha256_file(f) for f in files},
        "architecture": hf["model_type"],
        "name": hf.get("_name_or_path") or folder.name,
        "chat_template": _chat_template(folder),
        "bos_token_id": hf.get("bos_token_id"),
        "eos_token_id": hf.get("eos_token_id"),
        "pad_token_id": hf.get("pad_token_id"),
        "source_dtype": sorted(dtypes),
    }
    return model, tokenizer, info


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not readable JSON ({e})") from e
    if not isinstance(obj, dict):
        raise InputError(f"{path} must hold a JSON object, not {type(obj).__name__}")
    return obj


def _check_llama(hf: dict[str, Any], cfg_path: Path) -> None:
    """Refuse configs whose model ``GPT`` would not compute: another architecture or Llama options
    that change the maths (biases, another activation, scaled rope)."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise InputError(f"{cfg_path} describes a '{model_type}' model; only model_type "
                         f"{', '.join(MODEL_TYPES)} can be imported")
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                "vocab_size", "max_position_embeddings"):
        if key not in hf:
            raise InputError(f"{cfg_path} lacks {key}; it is not a complete Llama config")
    if hf.get("hidden_act", "silu") != "silu":
        raise InputError(f"{cfg_path} sets hidden_act = {hf['hidden_act']!r}; only 'silu' is supported")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise InputError(f"{cfg_path} sets {key} = true; only Llama models without biases are supported")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise InputError(f"{cfg_path} uses rope scaling '{rope_type}'; only plain rotary embeddings "
                         f"(rope_type 'default') are supported")


def _weight_files(folder: Path) -> list[Path]:
    """``model.safetensors``, or the shards its ``model.safetensors.index.json`` lists."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = _read_json(index).get("weight_map") or {}
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        for s in shards:
            if not s.is_file():
                raise InputError(f"{s} is missing but {index} lists it; download every shard")
        if shards:
            return shards
    raise InputError(f"{folder} has no model.safetensors (or sharded index); only safetensors weights "
                     f"can be imported")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path} is corrupt or truncated ({e}); download it again") from e


def _chat_template(folder: Path) -> str | None:
    """The chat template, from ``chat_template.jinja`` (newer transformers) or ``tokenizer_config.json``."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        template = _read_json(tc).get("chat_template")
        if isinstance(template, str):
            return template
    return None
