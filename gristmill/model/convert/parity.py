"""How closely an exported model computes what Gristmill computes, measured on a few tokens.

The same token ids (a fixed chat exchange in the model's own tokenizer) go through Gristmill's model and
through the exported files, read by the reference runtime when it is installed (transformers for the
folder, llama-cpp-python for the GGUF file) and otherwise by Gristmill's own importers (which checks the
files' names, layout and tensor types, but not a second implementation of the maths).

Exported logits lack Gristmill's soft-cap when it was dropped (see ``exported``), so they are compared
after applying the same ``cap * tanh(x / cap)``: ``max_abs_logit_diff`` is then pure numerical (and
quantisation) error. What dropping the cap changes is reported beside it: the largest raw difference and
the mean KL divergence between Gristmill's next-token distribution and the uncapped one.
``argmax_agreement`` is the fraction of positions where both pick the same next token (teacher-forced
greedy decoding). llama.cpp keeps its KV cache in f16 by default, so even an f32 file differs from
Gristmill by more than float32 rounding (about 1e-4 of the largest logit for a trained model).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from gristmill.model.convert.exported import ExportSource

PROBE = [
    {"role": "system", "content": "You answer in two sentences."},
    {"role": "user", "content": "Who was Hamlet, and why does he wait so long before he acts?"},
    {"role": "assistant", "content": "Hamlet is the Prince of Denmark in Shakespeare's play of 1600. He waits "
                                     "because he doubts the ghost, fears damnation and thinks too much."},
    {"role": "user", "content": "What happens to him in Act 5, scene 2?"},
]
"""The chat exchange whose tokens are scored: special tokens, words, digits and punctuation."""


def probe_ids(source: ExportSource, n: int) -> list[int]:
    """The first ``n`` tokens (at most the context length) of :data:`PROBE` as the model's ChatML."""
    from gristmill.formats.chat import render_chat

    ids = source.tokenizer.encode(render_chat(PROBE, add_generation_prompt=True), add_special_tokens=False).ids
    return ids[:max(1, min(n, source.config.block_size))]


def gristmill_logits(source: ExportSource, ids: list[int]) -> torch.Tensor:
    """Gristmill's logits [T, V] (float32, soft-capped as the model computes them)."""
    import torch

    with torch.no_grad():
        return source.model(torch.tensor([ids]))[0][0].float()


def compare(source: ExportSource, ours: torch.Tensor, theirs: torch.Tensor, checked_with: str) -> dict[str, Any]:
    """The figures of one comparison: ``theirs`` are the exported model's (uncapped) logits [T, V]."""
    import torch

    cap = source.dropped_softcap
    capped = cap * torch.tanh(theirs / cap) if cap else theirs
    out: dict[str, Any] = {
        "checked_with": checked_with,
        "tokens": int(ours.shape[0]),
        "max_abs_logit_diff": float((capped - ours).abs().max()),
        "argmax_agreement": float((capped.argmax(-1) == ours.argmax(-1)).float().mean()),
    }
    if cap:
        log_p, log_q = ours.log_softmax(-1), theirs.log_softmax(-1)
        out["uncapped_max_abs_logit_diff"] = float((theirs - ours).abs().max())
        out["uncapped_mean_kl"] = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    return out


def check_hf(source: ExportSource, folder: Path, ids: list[int]) -> dict[str, Any]:
    """Compare the exported transformers folder with Gristmill's model on ``ids``."""
    import torch

    from gristmill.core.extras import available

    ours = gristmill_logits(source, ids)
    if available("transformers"):
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar per load would clutter the stage's log
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        with torch.no_grad():
            theirs = model(torch.tensor([ids])).logits[0].float()
        return compare(source, ours, theirs, "transformers")
    from gristmill.model.convert.hf import import_hf

    model, _, _ = import_hf(folder)
    with torch.no_grad():
        theirs = model(torch.tensor([ids]))[0][0].float()
    return compare(source, ours, theirs, "gristmill import")


def check_gguf(source: ExportSource, path: Path, ids: list[int], *, quantized: bool = False) -> dict[str, Any]:
    """Compare the exported GGUF file with Gristmill's model on ``ids`` (quantisation error included);
    ``quantized``: the file has quantised tensors (see :func:`llama_cpp_logits`)."""
    import torch

    from gristmill.core.extras import available

    ours = gristmill_logits(source, ids)
    if available("llama_cpp"):
        return compare(source, ours, llama_cpp_logits(path, ids, one_at_a_time=quantized), "llama.cpp")
    from gristmill.model.convert.gguf import import_gguf

    model, _, _ = import_gguf(path)
    with torch.no_grad():
        theirs = model(torch.tensor([ids]))[0][0].float()
    return compare(source, ours, theirs, "gristmill import")


def llama_cpp_logits(path: Path, ids: list[int], *, one_at_a_time: bool = False) -> torch.Tensor:
    """llama.cpp's logits [T, V] for ``ids`` (llama-cpp-python), fed as one batch or ``one_at_a_time``.

    One at a time is for quantised files: on CPUs with AMX, llama.cpp multiplies quantised weights by a
    batch of several tokens with AMX tile kernels, which crash the process (a segmentation fault, not an
    exception) where the system does not grant AMX state, as in some sandboxes. Token by token takes the
    vector kernels and computes the same logits.
    """
    import numpy as np
    import torch
    from llama_cpp import Llama

    batch = 1 if one_at_a_time else max(len(ids), 16)
    llm = Llama(model_path=str(path), n_ctx=max(len(ids), 16), n_batch=batch, n_ubatch=batch, logits_all=True,
                verbose=False)
    try:
        llm.eval(ids)
        scores = np.array(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()
    return torch.from_numpy(scores)
