"""Single-request generation with the KV cache: fill the cache with the prompt, then sample one token at a
time, streaming text deltas.

The model's tokenizer is byte-level BPE, so one token can end in the middle of a multi-byte UTF-8
character; the undecodable tail is held back until the character is complete. Text that could be the start
of a stop string is held back too, so a stop string never reaches the caller. The whole context (prompt
plus generated tokens) is at most the model's ``block_size``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from gristmill.errors import InputError
from gristmill.formats.vocab import EOT_ID
from gristmill.inference.sampling import (
    IncrementalDecoder,
    SamplingParams,
    find_stop,
    held_suffix,
    sample_next,
)
from gristmill.model.gpt import GPT


class PromptTooLongError(InputError):
    """The prompt leaves no room in the model's context window for a generated token."""


@dataclass
class Completion:
    """A finished generation."""

    text: str
    finish_reason: str
    """``"stop"`` (a stop string or stop token) or ``"length"`` (max_new_tokens or the context window)."""
    prompt_tokens: int
    completion_tokens: int
    """Tokens sampled, including a stop token that ended generation."""
    token_ids: list[int] = field(default_factory=list)
    """The sampled token ids (including a final stop token)."""


def fit_prompt(ids: list[int], block_size: int, truncate: bool) -> list[int]:
    """Make the prompt leave room for at least one new token in the context window.

    With ``truncate`` an overlong prompt keeps its last ``block_size // 2`` tokens, leaving half the window
    for generation; otherwise it is a :class:`PromptTooLongError`.
    """
    if len(ids) < block_size:
        return ids
    if not truncate:
        raise PromptTooLongError(f"the prompt is {len(ids)} tokens but the model's context window is "
                                 f"{block_size} tokens; shorten it to at most {block_size - 1} tokens")
    return ids[-(block_size // 2):]


@torch.inference_mode()
def generate_ids(model: GPT, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
    """Yield sampled token ids one at a time (a stop token is yielded, then generation ends).

    The prompt must be shorter than ``block_size`` (see :func:`fit_prompt`); generation also ends when
    the context window is full.
    """
    if not prompt_ids:
        raise ValueError("generate_ids needs at least one prompt token")
    block_size = model.config.block_size
    budget = min(params.max_new_tokens, block_size - len(prompt_ids))
    if budget <= 0:
        return
    was_training = model.training  # fine-tuning samples mid-training: give the model back as it came
    model.eval()
    device = model.tok_emb.weight.device
    generator = None
    if params.seed is not None and params.temperature > 0:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    stop_ids = set(params.stop_token_ids)
    # The last sampled token is never fed back, so the cache holds at most prompt + budget - 1 tokens.
    cache = model.new_cache(1, len(prompt_ids) + budget)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    try:
        for i in range(budget):
            logits, _ = model(idx, cache=cache)  # [1,T,V]
            nxt = sample_next(logits[0, -1], params, generator)
            yield nxt
            if nxt in stop_ids or i == budget - 1:
                return
            idx = torch.tensor([[nxt]], dtype=torch.long, device=device)
    finally:
        model.train(was_training)


class TextStream:
    """Iterate over the text deltas of one generation; afterwards the counts and finish reason are set.

    >>> s = stream(model, tok, "Once upon", SamplingParams(max_new_tokens=20))
    >>> text = "".join(s)   # or: for delta in s: print(delta, end="")
    >>> s.finish_reason, s.completion_tokens
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, prompt_ids: list[int], params: SamplingParams):
        self.model, self.tokenizer, self.params = model, tokenizer, params
        self.prompt_ids = prompt_ids
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self.text = ""
        self._iter = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._iter

    def _run(self) -> Iterator[str]:
        stops = self.params.stop
        stop_ids = set(self.params.stop_token_ids)
        decoder = IncrementalDecoder(self.tokenizer)
        full, sent = "", 0  # all decoded text, and how much of it has been yielded
        reason, hit = "length", False
        for tid in generate_ids(self.model, self.prompt_ids, self.params):
            self.token_ids.append(tid)
            self.completion_tokens += 1
            if tid in stop_ids:
                reason = "stop"
                break
            full += decoder.push(tid)
            cut = find_stop(full, stops, sent)
            if cut is not None:
                full, reason, hit = full[:cut], "stop", True
                break
            end = len(full) - held_suffix(full, stops)
            if end > sent:
                yield full[sent:end]
                sent = end
        if not hit:  # what the decoder held back (an incomplete character) is part of the text
            full += decoder.flush()
            cut = find_stop(full, stops, sent)
            if cut is not None:
                full, reason = full[:cut], "stop"
        if len(full) > sent:
            yield full[sent:]
        self.text, self.finish_reason = full, reason

    def result(self) -> Completion:
        """Run to the end (if not already) and return the completion."""
        for _ in self._iter:
            pass
        return Completion(self.text, self.finish_reason or "length", self.prompt_tokens,
                          self.completion_tokens, list(self.token_ids))


def encode_prompt(tokenizer: Tokenizer, prompt: str | Sequence[int]) -> list[int]:
    """Token ids of a prompt (text, or ids as given); an empty prompt becomes ``<|endoftext|>``.

    Documents in the token files are separated by ``<|endoftext|>``, so it is the natural start of text.
    """
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids if isinstance(prompt, str) else list(prompt)
    return ids or [EOT_ID]


def stream(model: GPT, tokenizer: Tokenizer, prompt: str | Sequence[int], params: SamplingParams,
           truncate: bool = False) -> TextStream:
    """Start a generation; iterate the result for text deltas. See :class:`TextStream`.

    ``truncate`` keeps the end of a prompt that does not fit the context window instead of raising
    :class:`PromptTooLongError`.
    """
    ids = fit_prompt(encode_prompt(tokenizer, prompt), model.config.block_size, truncate)
    vocab = model.config.vocab_size
    if any(not 0 <= i < vocab for i in ids):
        raise InputError(f"prompt token ids must be in [0, {vocab})")
    return TextStream(model, tokenizer, ids, params)


def generate(model: GPT, tokenizer: Tokenizer, prompt: str | Sequence[int], params: SamplingParams,
             truncate: bool = False) -> Completion:
    """Generate a whole completion for one prompt."""
    return stream(model, tokenizer, prompt, params, truncate).result()
