"""Text generation with the KV cache: sampling, stop conditions and streaming text deltas.

The prompt is fed once to fill the cache, then one sampled token at a time. :func:`stream` yields text
as it is produced; the model's tokenizer is byte-level BPE, so one token can end in the middle of a
multi-byte UTF-8 character, and the undecodable tail is held back until the character is complete.
Text that could be the start of a stop string is held back too, so a stop string never reaches the
caller. The whole context (prompt plus generated tokens) is at most the model's ``block_size``.

Used by the evaluate stage (samples), fine-tuning (samples) and the server.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from gristmill.errors import InputError
from gristmill.model import GPT, load_model
from gristmill.tokenize import EOT_ID, IM_END_ID, load_tokenizer

DEFAULT_STOP_IDS = (IM_END_ID, EOT_ID)
"""Generation ends at ``<|im_end|>`` (end of a chat turn) and ``<|endoftext|>`` (end of a document)."""


class PromptTooLongError(InputError):
    """The prompt leaves no room in the model's context window for a generated token."""


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop."""

    max_new_tokens: int = 128
    """Most tokens to generate (fewer if the context window fills first)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (always the most likely token)."""
    top_k: int | None = None
    """Sample only among the k most likely tokens (None or 0 = all)."""
    top_p: float | None = None
    """Nucleus sampling: the smallest set of tokens whose probabilities add up to p (None or 1 = all)."""
    stop: Sequence[str] = ()
    """Strings that end generation; the stop string itself is not part of the output."""
    stop_token_ids: Sequence[int] = DEFAULT_STOP_IDS
    """Token ids that end generation; they are not part of the output text."""
    seed: int | None = None
    """Seed of the sampling generator, for reproducible samples (None = fresh randomness)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in self.stop if s)


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


# ----------------------------------------------------------------------------------------------------
# Loading


def resolve_model_dir(run_dir: Path, which: str = "auto") -> Path:
    """The model directory of a run: ``finetune/model`` if it exists (for ``"auto"``), else ``train/model``.

    ``which`` is ``"auto"``, ``"finetune"`` or ``"train"``.
    """
    run_dir = Path(run_dir)
    candidates = {"auto": ("finetune", "train"), "finetune": ("finetune",), "train": ("train",)}
    if which not in candidates:
        raise InputError(f"model '{which}' is not one of auto, train, finetune")
    for stage in candidates[which]:
        d = run_dir / stage / "model"
        if (d / "config.json").is_file() and (d / "model.safetensors").is_file():
            return d
    wanted = " or ".join(f"{run_dir / s / 'model'}" for s in candidates[which])
    raise InputError(f"no model found in {run_dir} (looked for {wanted}); run `gristmill run` for this "
                     f"recipe first, or pass a model directory")


def is_model_dir(path: Path) -> bool:
    return (Path(path) / "config.json").is_file() and (Path(path) / "model.safetensors").is_file()


def load_for_inference(model_dir: Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer]:
    """The model (in eval mode, on ``device``) and tokenizer of a model directory."""
    model_dir = Path(model_dir)
    model = load_model(model_dir, device)
    tokenizer = load_tokenizer(model_dir)
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------------------------------
# Sampling


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token id from the logits [V] of the last position."""
    logits = logits.float()
    if params.temperature == 0:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p is not None and params.top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        # drop a token when the tokens ranked above it already cover top_p (the first always stays)
        drop = (torch.cumsum(sorted_p, dim=-1) - sorted_p) >= params.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


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


class IncrementalDecoder:
    """Turn token ids into text pieces without splitting multi-byte UTF-8 characters.

    Decodes a short window of recent tokens and emits only the new text; a window whose text ends in
    U+FFFD (an incomplete byte sequence) waits for the next token. :meth:`flush` returns whatever is held.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # start of the window: text before it has been emitted and is final
        self.read = 0  # end of what has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(done):]
        return ""

    def flush(self) -> str:
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(done):]


def _held_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the beginning of a stop string (held back)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _find_stop(text: str, stops: Sequence[str], sent: int) -> int | None:
    """Where the first stop string in ``text`` begins, or None; text before ``sent`` holds none."""
    if not stops:
        return None
    start = max(0, sent - max(len(s) for s in stops))  # a match may begin inside a held-back prefix
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


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
            cut = _find_stop(full, stops, sent)
            if cut is not None:
                full, reason, hit = full[:cut], "stop", True
                break
            end = len(full) - _held_suffix(full, stops)
            if end > sent:
                yield full[sent:end]
                sent = end
        if not hit:  # what the decoder held back (an incomplete character) is part of the text
            full += decoder.flush()
            cut = _find_stop(full, stops, sent)
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
