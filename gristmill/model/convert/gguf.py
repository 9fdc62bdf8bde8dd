"""Import a llama.cpp GGUF file of a Llama-architecture model: weights, byte-level BPE tokenizer, chat
template.

Every tensor is dequantised to float32 (whatever the file's quantisation: Q4_1, Q8_0, F16 ...), so the
imported model computes what the file's weights say, not what llama.cpp's quantised kernels compute.
The query/key rows are put back in Gristmill's rotary order (see ``keys``). The tokenizer is rebuilt
from ``tokenizer.ggml.*`` as a Hugging Face ``tokenizers`` BPE with the pre-tokenizer that llama.cpp
picks for the file's ``tokenizer.ggml.pre``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.errors import InputError
from gristmill.model.convert.keys import KEY_KEY, QUERY_KEY, rename, rotary_rows_from_gguf, template

if TYPE_CHECKING:
    import numpy as np
    from gguf.gguf_reader import GGUFReader, ReaderTensor
    from tokenizers import Tokenizer

    from gristmill.model.gpt import GPT

ARCHITECTURES = ("llama",)
"""``general.architecture`` values this importer reads."""

PLAIN_PRE = ("default", "gpt2", "gpt-2")
"""``tokenizer.ggml.pre`` values split with GPT-2's regex alone (llama.cpp's own name is ``gpt-2``; Gristmill's
exporter writes it)."""
DIGIT_PRE = ("smollm", "starcoder", "refact")
"""``tokenizer.ggml.pre`` values that llama.cpp splits into single digits first, then with GPT-2's regex
(SmolLM2 says ``smollm``; its original ``tokenizer.json`` has the same Digits + ByteLevel sequence)."""

_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED = 1, 3, 4  # llama.cpp's token types
_MISSING = object()


def import_gguf(path: Path) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """The model, tokenizer and import info of a GGUF file of a Llama-architecture model.

    ``info`` holds the chat template (``tokenizer.chat_template``, None if the file has none), the
    bos/eos/pad ids, the pre-tokenizer name, the tensor types found and the file's name and sha256.
    Raises InputError for a missing or unreadable file, another architecture, or an unsupported
    tokenizer, rope scaling or tensor type.
    """
    import torch

    from gristmill.core.workspace import sha256_file
    from gristmill.model.convert.imported import build_model, llama_config

    path = Path(path)
    reader = _open(path)
    arch = _field(reader, "general.architecture", path)
    if arch not in ARCHITECTURES:
        raise InputError(f"{path} holds a '{arch}' model; only GGUF files of architecture "
                         f"{', '.join(ARCHITECTURES)} can be imported")
    for key in (f"{arch}.rope.scaling.type", f"{arch}.expert_count"):
        value = _field(reader, key, path, default=None)
        if value not in (None, "none", 0):
            raise InputError(f"{path} sets {key} = {value!r}; only Llama models without rope scaling or "
                             f"experts can be imported")

    tokenizer, pre = _tokenizer(reader, path)  # first: an unsupported tokenizer fails before the slow part

    n_embd = int(_field(reader, f"{arch}.embedding_length", path))
    n_head = int(_field(reader, f"{arch}.attention.head_count", path))
    n_kv_head = int(_field(reader, f"{arch}.attention.head_count_kv", path, default=n_head))
    head_dim = n_embd // n_head
    for key in (f"{arch}.rope.dimension_count", f"{arch}.attention.key_length",
                f"{arch}.attention.value_length"):
        value = _field(reader, key, path, default=head_dim)
        if int(value) != head_dim:
            raise InputError(f"{path} sets {key} = {value}, but Gristmill's model needs it equal to "
                             f"embedding_length / head_count = {head_dim}")

    names = {t.name for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise InputError(f"{path} has no token_embd.weight tensor; it is not a complete Llama GGUF file")
    n_vocab = int(next(t for t in reader.tensors if t.name == "token_embd.weight").shape[1])
    cfg = llama_config(
        path, vocab_size=n_vocab,
        context_length=int(_field(reader, f"{arch}.context_length", path)),
        n_layer=int(_field(reader, f"{arch}.block_count", path)),
        n_head=n_head, n_kv_head=n_kv_head, n_embd=n_embd,
        mlp_hidden=int(_field(reader, f"{arch}.feed_forward_length", path)),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", path, default=10000.0)),
        norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", path)),
        # llama.cpp reuses token_embd as the output head when the file has no output.weight
        tie_embeddings="output.weight" not in names,
    )

    state: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = rename(t.name, "gguf", "gristmill")
        if name is None:
            raise InputError(f"{path} has a tensor {t.name} that a plain Llama model does not have; only "
                             f"Llama models without biases, rope factors or extra norms are supported")
        w = torch.from_numpy(_dequantize(t, path))
        kind = template(name)
        if kind == QUERY_KEY:
            w = rotary_rows_from_gguf(w, cfg.n_head)
        elif kind == KEY_KEY:
            w = rotary_rows_from_gguf(w, cfg.kv_heads)
        state[name] = w.contiguous()
    model = build_model(cfg, state, path)

    if tokenizer.get_vocab_size() > n_vocab:
        raise InputError(f"{path} lists {tokenizer.get_vocab_size()} tokens but token_embd.weight has only "
                         f"{n_vocab} rows; the file is inconsistent")
    info: dict[str, Any] = {
        "format": "gguf",
        "source": path.name,
        "sha256": {path.name: sha256_file(path)},
        "architecture": arch,
        "name": _field(reader, "general.name", path, default=None),
        "chat_template": _field(reader, "tokenizer.chat_template", path, default=None),
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id", path, default=None),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id", path, default=None),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id", path, default=None),
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", path, default=False)),
        "pre_tokenizer": pre,
        "tensor_types": dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items())),
    }
    return model, tokenizer, info


def _open(path: Path) -> GGUFReader:
    try:
        from gguf import GGUFReader
    except ImportError as e:
        from gristmill.errors import MissingExtra

        raise MissingExtra("importing GGUF files", "convert", "gguf") from e
    if not path.is_file():
        raise InputError(f"{path} does not exist; pass a .gguf file of a Llama-architecture model")
    try:
        return GGUFReader(path)
    except (ValueError, OSError, EOFError, IndexError) as e:  # bad magic, truncated header, empty file
        raise InputError(f"{path} is not a readable GGUF file ({e}); pass a .gguf file of a "
                         f"Llama-architecture model") from e


def _field(reader: GGUFReader, key: str, path: Path, default: Any = _MISSING) -> Any:
    """A metadata value as a Python value (str, int, float, bool or list); ``default`` if absent."""
    field = reader.get_field(key)
    if field is None:
        if default is _MISSING:
            raise InputError(f"{path} lacks the metadata key {key}; it is not a complete GGUF file of a "
                             f"Llama-architecture model")
        return default
    return field.contents()


def _dequantize(t: ReaderTensor, path: Path) -> np.ndarray:
    """Tensor ``t`` as a writable float32 numpy array in PyTorch's shape (GGUF lists dims fastest first)."""
    import numpy as np
    from gguf.quants import dequantize

    try:
        values = dequantize(t.data, t.tensor_type)
    except NotImplementedError as e:
        raise InputError(f"{path}: tensor {t.name} is stored as {t.tensor_type.name}, which the gguf package "
                         f"cannot dequantise; convert the file to F16, Q8_0 or a Q4/Q5 type") from e
    shape = tuple(int(d) for d in reversed(t.shape))
    return np.array(values, dtype=np.float32).reshape(shape)  # a copy: the reader's memmap is read-only


def _tokenizer(reader: GGUFReader, path: Path) -> tuple[Tokenizer, str]:
    """The file's byte-level BPE tokenizer, and its ``tokenizer.ggml.pre`` name."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = _field(reader, "tokenizer.ggml.model", path)
    if kind != "gpt2":
        raise InputError(f"{path} has a '{kind}' tokenizer; only byte-level BPE tokenizers "
                         f"(tokenizer.ggml.model = gpt2) can be imported")
    pre = _field(reader, "tokenizer.ggml.pre", path, default="default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in PLAIN_PRE:
        pre_tokenizer: Any = byte_level
    elif pre in DIGIT_PRE:
        pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        raise InputError(f"{path} uses the pre-tokenizer '{pre}'; supported: "
                         f"{', '.join(PLAIN_PRE + DIGIT_PRE)}")

    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens", path)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        dup = next(tok for tok, n in Counter(tokens).items() if n > 1)
        raise InputError(f"{path} lists the token {dup!r} more than once; a BPE vocabulary needs unique tokens")
    merges = []
    for m in _field(reader, "tokenizer.ggml.merges", path):
        left, sep, right = m.partition(" ")
        if not sep or left not in vocab or right not in vocab:
            raise InputError(f"{path} has a malformed merge {m!r} (expected two known tokens joined by a space)")
        merges.append((left, right))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()

    # Control tokens (<|im_start|> ...) must match whole in text and count as special (skipped when
    # decoding with skip_special_tokens); user-defined ones match whole but are ordinary text.
    types = _field(reader, "tokenizer.ggml.token_type", path, default=None) or [_TOKEN_NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise InputError(f"{path} lists {len(tokens)} tokens but {len(types)} token types; the file is inconsistent")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types, strict=True) if ty == _TOKEN_CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types, strict=True) if ty == _TOKEN_USER_DEFINED])

    bos = _field(reader, "tokenizer.ggml.bos_token_id", path, default=None)
    if _field(reader, "tokenizer.ggml.add_bos_token", path, default=False) and bos is not None:
        # llama.cpp prepends bos when it encodes a prompt for such a model; do the same on encode
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B",
            special_tokens=[(tokens[bos], bos)])
    return tok, pre
