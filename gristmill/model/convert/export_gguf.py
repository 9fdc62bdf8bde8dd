"""Export a model as a GGUF file of llama.cpp's ``llama`` architecture (llama.cpp, llama-cpp-python,
Ollama, LM Studio).

What llama.cpp needs, and where it comes from here:

- ``llama.*`` hyper-parameters from ``ModelConfig`` (context length = ``block_size``);
- the tokenizer as ``tokenizer.ggml.*``: model ``gpt2`` (byte-level BPE), the token strings in id order,
  their merges, a type per token (special tokens are *control* tokens, matched whole and hidden when
  decoding), the pre-tokenizer name llama.cpp splits text with (``gpt-2`` for Gristmill's tokenizer,
  ``smollm`` for SmolLM2's digit-splitting one), bos/eos/pad/eot ids and the chat template;
- the weights under GGUF names (``keys``), with the query/key rows of each head reordered for llama.cpp's
  adjacent-pair rotary (``keys.rotary_rows_to_gguf``, undone by ``gguf.import_gguf``).

GGUF lists a tensor's dimensions fastest first, the reverse of PyTorch; the ``gguf`` package's writer
takes numpy arrays in PyTorch's order and reverses them itself. Tensor types: ``f32``; ``f16``; ``q8_0``
(blocks of 32 weights sharing one f16 scale, quantised by the ``gguf`` package exactly as ggml does). Norm
weights stay f32 in every case, and a matrix whose rows are not a multiple of 32 cannot be Q8_0 and is
written f16.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.errors import InputError
from gristmill.formats.vocab import IM_END_ID, SPECIAL_TOKENS
from gristmill.model.convert.keys import KEY_KEY, QUERY_KEY, rename, rotary_rows_to_gguf, template

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer

    from gristmill.model.convert.exported import ExportSource

GGUF_DTYPES = ("f32", "f16", "q8_0")
"""Tensor types :func:`export_gguf` writes (norm weights are f32 in all of them)."""

_Q8_BLOCK = 32  # weights per Q8_0 block: a matrix row must hold whole blocks


def export_gguf(source: ExportSource, path: Path, *, dtype: str = "f16", license: str | None = None,
                description: str | None = None) -> dict[str, Any]:
    """Write ``source`` as a llama.cpp GGUF file at ``path`` (atomically).

    Returns ``{"bytes": file size, "tensor_types": {type: count}}``. Raises InputError for a tokenizer
    llama.cpp cannot reproduce (not byte-level BPE, or a pre-tokenizer it has no name for), MissingExtra
    without the ``gguf`` package.
    """
    from gristmill.core.extras import require
    from gristmill.core.workspace import atomic_open

    gguf = require("gguf", "convert", "exporting GGUF files")
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    path = Path(path)
    c = source.config
    pre = pre_tokenizer_name(source.tokenizer, source.model_dir / "tokenizer.json")
    tokens, types, merges = vocabulary(source.tokenizer, c.vocab_size)

    # The writer opens the path it is given: give it atomic_open's temporary file, which is renamed over
    # ``path`` once everything is written (atomic_open's own, unused handle only flushes and syncs it).
    with atomic_open(path, "wb") as tmp:
        w = gguf.GGUFWriter(tmp.name, "llama")
        w.add_name(source.name)
        if license:
            w.add_license(license)
        if description:
            w.add_description(description)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
        if dtype == "q8_0":
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(c.block_size)
        w.add_embedding_length(c.n_embd)
        w.add_block_count(c.n_layer)
        w.add_feed_forward_length(c.hidden)
        w.add_head_count(c.n_head)
        w.add_head_count_kv(c.kv_heads)
        w.add_rope_dimension_count(c.head_dim)
        w.add_rope_freq_base(c.rope_theta)
        w.add_layer_norm_rms_eps(c.norm_eps)
        w.add_vocab_size(c.vocab_size)

        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(source.bos_id)
        w.add_eos_token_id(source.eos_id)
        w.add_pad_token_id(source.pad_id)
        if source.tokenizer.id_to_token(IM_END_ID) == SPECIAL_TOKENS[IM_END_ID]:
            w.add_eot_token_id(IM_END_ID)  # the end of a chat turn, whatever eos the model has
        w.add_add_bos_token(source.add_bos)
        w.add_add_eos_token(False)
        w.add_chat_template(source.chat_template)

        counts: Counter[str] = Counter()
        for name, t in source.model.state_dict().items():
            gguf_name = rename(name, "gristmill", "gguf")
            if gguf_name is None:  # load_source refused every option whose weights Llama lacks
                raise AssertionError(f"no GGUF name for the weight {name}")
            a = t.detach().to("cpu").float().numpy()
            kind = template(name)
            if kind == QUERY_KEY:
                a = rotary_rows_to_gguf(a, c.n_head)
            elif kind == KEY_KEY:
                a = rotary_rows_to_gguf(a, c.kv_heads)
            data, qtype = _encode(gguf, a, dtype)
            w.add_tensor(gguf_name, data, raw_dtype=qtype)
            counts[qtype.name] += 1

        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"bytes": path.stat().st_size, "tensor_types": dict(sorted(counts.items()))}


def _encode(gguf: Any, a: np.ndarray, dtype: str) -> tuple[np.ndarray, Any]:
    """The bytes (as numpy) and GGML type of one float32 tensor for the chosen file ``dtype``."""
    import numpy as np

    T = gguf.GGMLQuantizationType
    if a.ndim == 1 or dtype == "f32":  # norm weights: llama.cpp multiplies them in f32
        return np.ascontiguousarray(a, dtype=np.float32), T.F32
    if dtype == "q8_0" and a.shape[-1] % _Q8_BLOCK == 0:
        return gguf.quants.quantize(np.ascontiguousarray(a), T.Q8_0), T.Q8_0
    return np.ascontiguousarray(a, dtype=np.float16), T.F16


def pre_tokenizer_name(tokenizer: Tokenizer, where: Path) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for the way ``tokenizer`` splits text before BPE.

    Only the two splits Gristmill's importer reads back are named: GPT-2's regex alone (``gpt-2``: every
    tokenizer Gristmill trains) and single digits first (``smollm``). Anything else would be tokenised
    differently by llama.cpp, so it is refused rather than written under a wrong name.
    """
    spec = json.loads(tokenizer.to_str())
    model, pre, norm = spec.get("model") or {}, spec.get("pre_tokenizer") or {}, spec.get("normalizer")
    if model.get("type") != "BPE" or norm is not None:
        raise InputError(f"{where} is not a plain byte-level BPE tokenizer (model {model.get('type')}, "
                         f"normalizer {norm and norm.get('type')}); only those can be written to GGUF")

    def byte_level(p: dict[str, Any]) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space")

    if byte_level(pre):
        return "gpt-2"
    parts = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(parts) == 2 and parts[0].get("type") == "Digits"
            and parts[0].get("individual_digits") and byte_level(parts[1])):
        return "smollm"
    raise InputError(f"{where} splits text with a pre-tokenizer llama.cpp has no name for "
                     f"({json.dumps(pre)[:120]}); only GPT-2's byte-level split, optionally after single "
                     f"digits, can be exported to GGUF")


def vocabulary(tokenizer: Tokenizer, n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """Token strings in id order, llama.cpp token types and ``"left right"`` merges, for ``n_vocab`` ids.

    llama.cpp needs one token per embedding row: rows past the tokenizer's last id (a vocabulary padded
    for speed) get placeholder tokens of type *unused*, which no text ever encodes to.
    """
    import gguf

    added = tokenizer.get_added_tokens_decoder()  # {id: AddedToken}: specials and user-added tokens
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        tok = tokenizer.id_to_token(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(tok)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(tok)
            types.append(gguf.TokenType.NORMAL)
    merges = json.loads(tokenizer.to_str())["model"].get("merges") or []
    # tokenizers writes merges as ["left", "right"] pairs (older files: "left right" strings)
    return tokens, [int(t) for t in types], [m if isinstance(m, str) else " ".join(m) for m in merges]
