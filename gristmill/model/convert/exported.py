"""What both exporters share: a model directory read once and checked for what Llama can express, its
special tokens, and its chat template as a Jinja string.

Gristmill's model is Llama plus two options. ``qk_norm`` (an RMSNorm on queries and keys) has no place in
Llama's weights or in llama.cpp's ``llama`` graph, so such a model is refused. ``logit_softcap``
(``cap * tanh(logits / cap)``, on by default in Gristmill) has none either; it only rescales logits
monotonically, so greedy decoding is unchanged and only the sampling distribution differs. Exporting
such a model is allowed when the caller says so (``allow_softcap_drop``), and :class:`ExportSource`
records the cap that the exported logits lack so the model card can say it.

Special tokens: a Gristmill model has ``<|endoftext|>`` = 0 (between documents), ``<|im_start|>`` = 1,
``<|im_end|>`` = 2, ``<|pad|>`` = 3. Gristmill never prepends a token to a prompt, so no exporter asks
for a BOS token to be added; generation ends at ``<|im_end|>`` or ``<|endoftext|>`` (what Gristmill's
sampler stops at). An imported model (``import.json``) keeps the ids and chat template it came with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.errors import InputError
from gristmill.formats.chat import IM_END, IM_START
from gristmill.formats.vocab import EOT_ID, IM_END_ID, PAD_ID, SPECIAL_TOKENS
from gristmill.model.convert.imported import IMPORT_FILE

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gristmill.model.config import ModelConfig
    from gristmill.model.gpt import GPT

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    f"{{{{- '{IM_START}' + message['role'] + '\\n' + message['content'] + '{IM_END}' + '\\n' }}}}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    f"{{{{- '{IM_START}assistant\\n' }}}}"
    "{%- endif %}"
)
"""Gristmill's ChatML (``gristmill.formats.chat.render_chat``) as a Jinja template, the form transformers'
``apply_chat_template`` and llama.cpp read: one ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per
message, then ``<|im_start|>assistant\\n`` when a generation prompt is asked for. No default system
message: Gristmill adds none."""


@dataclass(frozen=True)
class ExportSource:
    """A model directory, loaded and checked, with everything an exporter writes besides the weights."""

    model_dir: Path
    model: GPT
    """Float32, eval mode, on the CPU."""
    tokenizer: Tokenizer
    name: str
    chat_template: str
    bos_id: int
    """The token a document starts after (never added to prompts: see ``add_bos``)."""
    eos_id: int
    """The token that ends what the model writes: ``<|im_end|>`` for a chat model, else ``<|endoftext|>``."""
    pad_id: int
    stop_ids: tuple[int, ...]
    """Every token that ends generation, ``eos_id`` first."""
    add_bos: bool
    """Whether prompts get ``bos_id`` prepended (Gristmill's own models: never)."""
    dropped_softcap: float | None
    """The soft-cap of Gristmill's logits that the exported model does not apply (None: nothing dropped)."""
    imported: dict[str, Any] | None
    """``import.json`` of an imported model (its source, sha256 ...), None for a model Gristmill trained."""

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def token(self, i: int) -> str:
        tok = self.tokenizer.id_to_token(i)
        if tok is None:
            raise InputError(f"{self.model_dir / 'tokenizer.json'} has no token with id {i}, which the model's "
                             f"special tokens need; the tokenizer does not belong to this model")
        return tok


def load_source(model_dir: Path, *, chat: bool = False, allow_softcap_drop: bool = False,
                name: str | None = None) -> ExportSource:
    """Read a model directory for export; InputError if Llama cannot express the model.

    ``chat`` marks a chat-tuned model (its eos is ``<|im_end|>``; a base model's is ``<|endoftext|>``).
    ``allow_softcap_drop`` lets a model with ``logit_softcap`` through (see the module docstring).
    ``name`` defaults to the imported model's name or the directory's name.
    """
    from gristmill.model.io import load_model
    from gristmill.tokenizer.bpe import load_tokenizer

    model_dir = Path(model_dir)
    model = load_model(model_dir, "cpu").float().eval()
    tokenizer = load_tokenizer(model_dir)
    cfg = model.config
    if cfg.qk_norm:
        raise InputError(f"{model_dir / 'config.json'} sets qk_norm = true, which neither Llama (transformers) nor "
                         f"llama.cpp can express, so this model cannot be exported; train with "
                         f"train.model.qk_norm: false to export")
    if cfg.logit_softcap and not allow_softcap_drop:
        raise InputError(f"{model_dir / 'config.json'} soft-caps logits at {cfg.logit_softcap:g}, which Llama has no "
                         f"place for; set export.allow_softcap_drop: true (allow_softcap_drop=True) to export "
                         f"uncapped logits (greedy decoding is unchanged), or train with "
                         f"train.model.logit_softcap: null")
    if tokenizer.get_vocab_size() > cfg.vocab_size:
        raise InputError(f"{model_dir / 'tokenizer.json'} has {tokenizer.get_vocab_size()} tokens but the model "
                         f"only {cfg.vocab_size} embeddings; the tokenizer does not belong to this model")

    imported = _read_import(model_dir)
    if imported is not None:
        # what the model came with; a missing id falls back to Gristmill's fixed ones (shared by contract)
        eos = _int_or(imported.get("eos_token_id"), IM_END_ID if chat else EOT_ID)
        bos = _int_or(imported.get("bos_token_id"), EOT_ID)
        pad = _int_or(imported.get("pad_token_id"), eos)
        template = imported.get("chat_template") or CHATML_TEMPLATE
        add_bos = bool(imported.get("add_bos_token", False))
        default_name = imported.get("name") or imported.get("source") or model_dir.name
    else:
        eos, bos = (IM_END_ID if chat else EOT_ID), EOT_ID
        # an imported tokenizer fine-tuned here may hold another token at id 3 (SmolLM2): pad with eos then
        pad = PAD_ID if tokenizer.id_to_token(PAD_ID) == SPECIAL_TOKENS[PAD_ID] else eos
        template, add_bos, default_name = CHATML_TEMPLATE, False, model_dir.name
    stop = tuple(dict.fromkeys((eos, IM_END_ID, EOT_ID)))
    src = ExportSource(model_dir=model_dir, model=model, tokenizer=tokenizer, name=name or str(default_name),
                       chat_template=template, bos_id=bos, eos_id=eos, pad_id=pad, stop_ids=stop,
                       add_bos=add_bos, dropped_softcap=cfg.logit_softcap or None, imported=imported)
    for i in (bos, eos, pad, *stop):
        src.token(i)  # each must exist
    return src


def _read_import(model_dir: Path) -> dict[str, Any] | None:
    p = model_dir / IMPORT_FILE
    if not p.is_file():
        return None
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{p} is not readable JSON ({e}); re-import the model") from e
    if not isinstance(info, dict):
        raise InputError(f"{p} must hold a JSON object; re-import the model")
    return info


def _int_or(value: Any, default: int) -> int:
    """An id from import.json (GGUF/HF may give a list of eos ids: the first is the main one)."""
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else default


def uncapped_note(cap: float) -> str:
    """One sentence for the card (and the GGUF description) about logits that lost their soft-cap."""
    return (f"Gristmill computed this model's logits as {cap:g} * tanh(logits / {cap:g}); Llama and llama.cpp have "
            f"no soft-cap, so the exported model gives the uncapped logits: greedy decoding picks the same "
            f"tokens, while sampling at a given temperature is slightly sharper than in Gristmill.")
