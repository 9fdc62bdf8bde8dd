"""The inference engine: many generations at once on one model, with continuous batching.

Requests wait in a bounded queue. A background thread runs a step loop; each step

1. drops cancelled requests (their KV-cache slots are free for the next step),
2. feeds prompts through the model, at most ``prefill_chunk`` tokens per step: waiting prompts that fit
   the step's budget whole are fed together in one forward pass (each attending only to itself), and a
   longer prompt is spread over several steps in chunks (so it delays the running streams by one chunk
   per step instead of by the whole prompt), and
3. runs one decode forward for every running sequence together, each attending over its own length.

Sequences finish on their own (a stop token, a stop string, ``max_new_tokens`` or the context window) and
leave the batch at once; new ones join between steps. Results stream back through thread-safe queues,
or an asyncio queue for a server (:meth:`Engine.submit` with ``loop``).

The KV cache is one preallocated tensor per layer, ``[slots + 1, K, capacity, D]``: slot ``i < B`` holds
the ``i``-th running sequence (running sequences are kept packed in slots ``0..B-1``, so a decode step
reads the plain view ``[:B, :, :L]``; a finished sequence's slot is refilled with the last one). A prompt
fed whole goes straight into the slot of its first choice; a chunked one into the last slot, the staging
area, until it is complete. Several choices of one prompt share its prefill: its cache is copied into
their slots. The capacity grows (by doubling) when a sequence needs it and shrinks when long sequences are
gone, so memory follows the longest running sequence rather than the model's whole context window.

The forward passes run the model's blocks through :class:`~gristmill.inference.quant.PackedBlock`: the
model's own fp32 modules, or (``EngineConfig.weights``) bf16, int8 or int4 copies with q/k/v and gate/up fused,
a bf16 KV cache and the residual stream kept in fp32; the model itself is never changed.

Every choice samples with :func:`~gristmill.inference.sampling.sample_next` and its own generator, and
decodes through the same stop-string and UTF-8 logic as :class:`~gristmill.inference.stream.TextStream`,
so with fp32 weights a request gives the text :func:`~gristmill.inference.stream.generate` gives (batched matrix products
round differently from single-row ones, so equality holds up to float rounding; greedy picks differ only
where two tokens tie to within that rounding).

Shapes in comments: B running sequences, T prompt tokens fed now, L attended length, C n_embd, H query
heads, K key/value heads, D head dim, V vocab.
"""

from __future__ import annotations

import asyncio
import queue
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from gristmill.errors import ConfigError, GristmillError, InputError
from gristmill.inference.quant import WEIGHT_FORMATS, PackedBlock, PackedLinear, check_format, head_format
from gristmill.inference.sampling import (
    MAX_SEED,
    IncrementalDecoder,
    SamplingParams,
    find_stop,
    held_suffix,
    sample_next,
)
from gristmill.inference.stream import Completion, PromptTooLongError, encode_prompt, fit_prompt
from gristmill.model.gpt import GPT, apply_rotary
from gristmill.runtime import release_openmp_threads

# ----------------------------------------------------------------------------------------------------
# Public types


@dataclass
class EngineConfig:
    """How many sequences run at once, how many requests may wait, and how prompts are fed."""

    max_batch: int = 32
    """Sequences decoded together (KV-cache slots); a request with ``n`` choices takes ``n`` of them."""
    max_queue: int = 64
    """Requests waiting for a slot; one more is refused with :class:`QueueFullError` (HTTP 503)."""
    prefill_chunk: int = 64
    """Most prompt tokens fed between two decode steps: bounds how long a new prompt pauses the running
    streams (on a CPU, 64 tokens of a 135M-parameter model take a few decode steps' time), at the price of
    more steps for long prompts."""
    max_seq_len: int | None = None
    """Longest sequence (prompt + generated tokens); None = the model's ``block_size``. KV-cache memory is
    at most ``n_layer * (max_batch + 1) * max_seq_len * K * D * 2`` values."""
    weights: str = "fp32"
    """Weight format decoding runs in (:mod:`gristmill.inference.quant`): fp32 (the model's own), bf16,
    int8 or int4 (weight-only, CPU), or auto: the fastest of int4 (CPU) and bf16 whose perplexity on a
    fixed text stays within 1% of fp32's (:func:`resolve_weights`), else fp32. All but fp32 keep the KV
    cache in bf16."""
    compile: bool = False
    """Decode single streams through ``torch.compile`` (weights bf16, int8 or int4): a step's small ops fused
    into a few kernels, 15-18% more tokens per second on a CPU (benchmarks/decode_speed.py), for a
    compilation when the engine starts (half a minute on 2 CPU cores; less once torch's compile cache on
    disk holds it). Batches of several sequences decode eagerly either way, and the tokens a compiled step
    picks can differ from the eager step's where two candidates are within bf16 rounding."""

    def __post_init__(self) -> None:
        for key in ("max_batch", "max_queue", "prefill_chunk"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.weights not in (*WEIGHT_FORMATS, "auto"):
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)} or auto, got {self.weights!r}")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2 (a prompt token and a generated one), got {self.max_seq_len}")


@dataclass
class GenerationParams:
    """One request's options on top of the sampler's: choices, penalties and log-probabilities."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    """Independent choices for the prompt (choice ``i`` samples with ``seed + i`` when a seed is set)."""
    presence_penalty: float = 0.0
    """Subtracted from the logit of every token generated so far (OpenAI's presence_penalty)."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it was generated so far (OpenAI's frequency_penalty)."""
    logprobs: bool = False
    """Report each generated token's log-probability under the model (before temperature, top-k/top-p and
    penalties)."""
    top_logprobs: int = 0
    """With ``logprobs``, also report this many most likely alternatives at each position."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        for key in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, key) <= 2.0:
                raise ValueError(f"{key} must be between -2 and 2, got {getattr(self, key)}")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {self.top_logprobs}")


@dataclass
class TokenLogprob:
    """A generated token, its log-probability and (if asked) the most likely alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)
    """(token id, log-probability) of the ``top_logprobs`` most likely tokens, most likely first."""


@dataclass
class Delta:
    """What one choice produced in one step: new text, the sampled ids, and the finish reason at the end."""

    index: int
    """The choice (0..n-1)."""
    text: str
    """New text (may be empty: an incomplete UTF-8 character or a possible stop string is held back)."""
    token_ids: list[int]
    """Token ids sampled in this step (a final stop token included)."""
    logprobs: list[TokenLogprob] | None = None
    """With ``logprobs``: one entry per sampled token except a final stop token."""
    finish_reason: str | None = None
    """``"stop"``, ``"length"`` or ``"cancelled"`` on the choice's last delta, else None."""


@dataclass
class Choice(Completion):
    """A finished choice: the completion, its index and (if asked) its tokens' log-probabilities."""

    index: int = 0
    logprobs: list[TokenLogprob] | None = None


class QueueFullError(GristmillError):
    """The engine's waiting queue is full; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class EngineClosedError(GristmillError):
    """The engine was closed while the request was waiting or running."""


_END = object()
"""Queue sentinel after a request's last delta."""


class RequestHandle:
    """A submitted request. Iterate it (``for d in handle`` or ``async for d in handle``) for its
    :class:`Delta` s, or call :meth:`result` (:meth:`aresult`) for the finished :class:`Choice` s.

    Made by :meth:`Engine.submit`; a handle submitted with an event loop is read on that loop only.
    """

    def __init__(self, engine: Engine, prompt_ids: list[int], params: GenerationParams,
                 loop: asyncio.AbstractEventLoop | None):
        self.engine = engine
        self.prompt_ids = prompt_ids
        self.params = params
        self.n = params.n
        self.prompt_tokens = len(prompt_ids)
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        """When the first token of any choice was sampled (``time.perf_counter``)."""
        self.choices: list[Choice | None] = [None] * params.n
        self.cancelled = False
        self.done = False
        self._open = params.n  # choices not yet finished
        self._loop = loop
        self._aq: asyncio.Queue[Any] | None = asyncio.Queue() if loop is not None else None
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()

    # --- engine side (the step thread, or a caller finishing a request that never ran)

    def _put(self, item: Any) -> None:
        if self._loop is None:
            self._q.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._aq.put_nowait, item)  # type: ignore[union-attr]
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            self.engine.cancel(self)

    def _finish_choice(self, choice: Choice) -> None:
        self.choices[choice.index] = choice
        self._open -= 1
        if self._open == 0:
            self.done = True
            self._put(_END)

    def _fail(self, error: BaseException) -> None:
        if not self.done:
            self.done = True
            self._put(error)

    # --- caller side

    def cancel(self) -> None:
        """Stop generating; the request's KV-cache slots are free for the engine's next step."""
        self.engine.cancel(self)

    def __iter__(self) -> Iterator[Delta]:
        if self._loop is not None:
            raise RuntimeError("this request was submitted with an event loop: use `async for` on that loop")
        while True:
            item = self._q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def __aiter__(self) -> AsyncIterator[Delta]:
        if self._aq is None:
            raise RuntimeError("this request was submitted without an event loop: iterate it with `for`")
        while True:
            item = await self._aq.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def result(self) -> list[Choice]:
        """Wait for every choice to finish; the choices in index order."""
        for _ in self:
            pass
        return [c for c in self.choices if c is not None]

    async def aresult(self) -> list[Choice]:
        """:meth:`result` for a request submitted with an event loop."""
        async for _ in self:
            pass
        return [c for c in self.choices if c is not None]


def token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    """The raw bytes a token stands for (a byte-level BPE token may be part of a UTF-8 character, so its
    decoded text alone can be U+FFFD)."""
    piece = tokenizer.id_to_token(token_id)
    if piece is None:
        return b""
    table = _byte_decoder()
    if all(ch in table for ch in piece):
        return bytes(table[ch] for ch in piece)
    return piece.encode("utf-8")


_BYTE_DECODER: dict[str, int] = {}


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte value, inverted: printable Latin-1 bytes stand for
    themselves, the other 68 take the code points from 256 upwards in byte order."""
    if not _BYTE_DECODER:
        printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
        extra = 0
        for b in range(256):
            if b in printable:
                _BYTE_DECODER[chr(b)] = b
            else:
                _BYTE_DECODER[chr(256 + extra)] = b
                extra += 1
    return _BYTE_DECODER


# ----------------------------------------------------------------------------------------------------
# The KV cache


class SlotCache:
    """Keys and values of every sequence: ``k_all`` and ``v_all`` ``[n_layer, slots + 1, K, capacity, D]``,
    and ``k[i]``, ``v[i]`` the views of layer ``i``.

    Slots ``0..slots-1`` hold running sequences; slot ``slots`` (:attr:`staging`) is where prompts are
    prefilled. Capacity grows and shrinks in powers of two between ``min_capacity`` and ``max_len``.
    """

    def __init__(self, n_layer: int, slots: int, n_kv: int, head_dim: int, max_len: int,
                 device: torch.device, dtype: torch.dtype, min_capacity: int = 256):
        self.n_layer, self.slots, self.n_kv, self.head_dim = n_layer, slots, n_kv, head_dim
        self.max_len, self.device, self.dtype = max_len, device, dtype
        self.min_capacity = min(min_capacity, max_len)
        self.staging = slots
        self.capacity = 0
        self.k_all = self.v_all = torch.empty(0)
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self._resize(self.min_capacity, keep=0)

    def _resize(self, capacity: int, keep: int) -> None:
        """Reallocate with ``capacity`` positions, keeping the first ``keep`` positions of every slot."""
        shape = (self.n_layer, self.slots + 1, self.n_kv, capacity, self.head_dim)
        k_all = torch.zeros(shape, device=self.device, dtype=self.dtype)
        v_all = torch.zeros(shape, device=self.device, dtype=self.dtype)
        if self.capacity:
            k_all[..., :keep, :] = self.k_all[..., :keep, :]
            v_all[..., :keep, :] = self.v_all[..., :keep, :]
        self.k_all, self.v_all, self.capacity = k_all, v_all, capacity
        self.k, self.v = list(k_all.unbind(0)), list(v_all.unbind(0))

    def _fit(self, length: int) -> int:
        cap = self.min_capacity
        while cap < length:
            cap *= 2
        return min(cap, self.max_len)

    def ensure(self, length: int, used: int) -> None:
        """Make room for ``length`` positions per slot; ``used`` positions of each slot hold data."""
        if length > self.max_len:
            raise ValueError(f"KV cache holds at most {self.max_len} positions, {length} asked")
        if length > self.capacity:
            self._resize(self._fit(length), keep=min(used, self.capacity))

    def shrink(self, used: int) -> None:
        """Give memory back when every sequence fits in a quarter of the capacity."""
        target = self._fit(max(used, 1) * 2)
        if target <= self.capacity // 2:
            self._resize(target, keep=used)

    def copy(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``src`` into slot ``dst`` in every layer."""
        for t in (*self.k, *self.v):
            t[dst, :, :length] = t[src, :, :length]

    def nbytes(self) -> int:
        """Bytes the cache holds now (it grows and shrinks with the longest sequence)."""
        return sum(t.numel() * t.element_size() for t in (self.k_all, self.v_all))


# ----------------------------------------------------------------------------------------------------
# Per-choice state


class _TextState:
    """Text of one choice as tokens arrive: the logic of ``TextStream`` (UTF-8 hold-back, stop strings
    held back and cut, stop ids), pushed one token at a time instead of pulled."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str], stop_ids: set[int]):
        self.decoder = IncrementalDecoder(tokenizer)
        self.stops, self.stop_ids = stops, stop_ids
        self.full, self.sent, self.hit = "", 0, False

    def push(self, token_id: int) -> tuple[str, str | None]:
        """The new text to send and, if the choice is finished, the finish reason."""
        if token_id in self.stop_ids:
            return self.close("stop")
        self.full += self.decoder.push(token_id)
        cut = find_stop(self.full, self.stops, self.sent)
        if cut is not None:
            self.full, self.hit = self.full[:cut], True
            return self.close("stop")
        end = len(self.full) - held_suffix(self.full, self.stops)
        if end <= self.sent:
            return "", None
        delta, self.sent = self.full[self.sent:end], end
        return delta, None

    def close(self, reason: str) -> tuple[str, str]:
        """End the text: what the decoder still holds is part of it (unless a stop string already cut it)."""
        if not self.hit:
            self.full += self.decoder.flush()
            cut = find_stop(self.full, self.stops, self.sent)
            if cut is not None:
                self.full, reason = self.full[:cut], "stop"
        delta, self.sent = self.full[self.sent:], len(self.full)
        return delta, reason


class _Sequence:
    """One choice of a request while it runs: its slot, length in the cache and sampling state."""

    def __init__(self, handle: RequestHandle, index: int, slot: int, length: int, budget: int,
                 tokenizer: Tokenizer, device: torch.device):
        self.handle, self.index, self.slot, self.length, self.budget = handle, index, slot, length, budget
        p = handle.params
        self.sampling = p.sampling
        self.stop_ids = set(p.sampling.stop_token_ids)
        self.text = _TextState(tokenizer, p.sampling.stop, self.stop_ids)
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if p.logprobs else None
        self.counts: Counter[int] = Counter()
        self.pending = -1  # the last sampled token, fed at the next decode step
        self.finished = False
        seed = p.sampling.seed
        # Every choice owns a generator, so concurrent requests never share random state; a seeded request
        # reproduces the single-request path (same seed, same generator calls), choice i using seed + i.
        seed = secrets.randbits(63) if seed is None else (seed + index) % (MAX_SEED + 1)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def penalize(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [V] less the presence and frequency penalties of the tokens generated so far."""
        p = self.handle.params
        if not self.counts or (p.presence_penalty == 0 and p.frequency_penalty == 0):
            return logits
        ids = torch.tensor(list(self.counts), device=logits.device)
        counts = torch.tensor(list(self.counts.values()), device=logits.device, dtype=logits.dtype)
        out = logits.clone()
        out[ids] -= p.frequency_penalty * counts + p.presence_penalty
        return out


@dataclass
class _Prefill:
    """A request whose prompt is being fed into the staging slot."""

    handle: RequestHandle
    done: int = 0
    """Prompt tokens already in the cache."""


# ----------------------------------------------------------------------------------------------------
# The engine


class Engine:
    """Continuous batching on one model: ``submit`` requests from any thread, read their deltas as they come.

    >>> with Engine(model, tokenizer) as engine:
    ...     handle = engine.submit(prompt_ids, SamplingParams(max_new_tokens=50))
    ...     for delta in handle:
    ...         print(delta.text, end="")

    The step loop starts on the first submit and stops at :meth:`close`.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, config: EngineConfig | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.config = config or EngineConfig()
        mc = model.config
        if self.config.max_seq_len is not None and self.config.max_seq_len > mc.block_size:
            raise ValueError(f"max_seq_len {self.config.max_seq_len} is longer than the model's context window "
                             f"({mc.block_size} tokens); use at most {mc.block_size}")
        self.context_length = self.config.max_seq_len or mc.block_size
        """Longest sequence, prompt plus generated tokens."""
        self.device = model.tok_emb.weight.device
        self.weights, self.weights_check = resolve_weights(model, tokenizer, self.config.weights)
        """The weight format decoding runs in, and what the ``auto`` quality check measured (None otherwise)."""
        self.blocks = [PackedBlock(b, self.weights) for b in model.blocks]
        head = model.lm_head.weight if model.lm_head is not None else model.tok_emb.weight  # [V,C]
        self.head = PackedLinear(head, head_format(self.weights))
        # the model's own dtype in fp32, else bf16: of the matrix outputs (so of q and k) and of the KV cache
        act = model.tok_emb.weight.dtype if self.weights == "fp32" else torch.bfloat16
        self._decode_layers = [
            (i, b.qkv, b.wo, b.mlp, _norm_of(b.attn_norm), _norm_of(b.mlp_norm), _norm_of(b.q_norm, act),
             _norm_of(b.k_norm, act), b.n_head, b.n_kv, b.hd) for i, b in enumerate(self.blocks)]
        """What a decode step reads of each block, unpacked once (attribute lookups cost as much as small ops);
        norms as (weight, eps), detached, so that a compiled step has no parameter to track."""
        self._final_norm = _norm_of(model.norm)
        if self.config.compile and self.config.weights == "fp32":
            raise ConfigError("compile needs weights bf16, int8 or int4 (fp32 decodes through the model's own "
                              "modules); set weights, or leave compile off")
        self.compiles = self.config.compile and self.weights != "fp32"
        """Whether single streams decode through the compiled step (``compile``, unless ``auto`` weights
        came out fp32)."""
        self._compiled: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        self.cache = SlotCache(mc.n_layer, self.config.max_batch, mc.kv_heads, mc.head_dim, self.context_length,
                               self.device, act)
        self._cv = threading.Condition()
        self._waiting: deque[RequestHandle] = deque()  # guarded by _cv
        self._cancelled: list[RequestHandle] = []  # guarded by _cv
        self._closed = False
        self._thread: threading.Thread | None = None
        # Owned by the step thread:
        self._prefill: _Prefill | None = None
        self._running: list[_Sequence] = []  # running[i].slot == i
        self.running_requests = 0
        """Requests being prefilled or decoded (read by metrics from any thread)."""
        self.steps = 0
        """Decode steps run so far."""

    # --- lifecycle

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the step thread (submit does it on first use); with ``compile``, compile the decode step
        first."""
        with self._cv:  # held while compiling too: a second caller waits for the first
            if self._closed:
                raise EngineClosedError("the engine is closed; create a new one")
            if self._thread is None:
                if self.compiles:
                    self._compile()
                # the model was loaded (and packed) on this thread: its idle OpenMP workers would make
                # libgomp stop spinning once the step thread has its own (see release_openmp_threads)
                release_openmp_threads()
                self._thread = threading.Thread(target=self._loop, name="gristmill-engine", daemon=True)
                self._thread.start()

    def _compile(self) -> None:
        """Compile :meth:`_decode_graph` and run it once (the compilation happens then). The past length is
        marked dynamic, so one graph serves every length and cache capacity; slot 0's first positions get
        throwaway values that a prefill overwrites before anything reads them."""
        self._compiled = torch.compile(self._decode_graph, fullgraph=True)
        try:
            with torch.inference_mode():
                self.cache.ensure(_COMPILED_FROM, 0)
                self._forward_decode([0], [_COMPILED_FROM - 1], warm_up=True)
        except Exception as e:  # no C++ compiler, an unsupported device or model: say so in one line
            self._compiled = None
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ConfigError(f"compiling the decode step failed ({type(e).__name__}: {first}); torch.compile "
                              f"needs a working C++ compiler on a CPU (apt-get install g++); or leave compile "
                              f"off") from e

    def close(self, timeout: float = 10.0) -> None:
        """Stop the step loop; requests still waiting or running end with :class:`EngineClosedError`."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cv:
            waiting, self._waiting = list(self._waiting), deque()
        for h in waiting:
            h._fail(EngineClosedError("the engine was closed before this request ran"))

    # --- requests

    @property
    def waiting_requests(self) -> int:
        """Requests in the queue, not yet admitted."""
        return len(self._waiting)

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | GenerationParams | None = None, *,
               loop: asyncio.AbstractEventLoop | None = None, wait: bool = False) -> RequestHandle:
        """Queue a generation for ``prompt_ids`` and return its handle at once.

        ``loop``: deliver deltas to this event loop (iterate the handle with ``async for`` there).
        ``wait``: when the queue is full, block until there is room instead of raising
        :class:`QueueFullError`. The prompt plus at least one token must fit :attr:`context_length`
        (:class:`~gristmill.inference.stream.PromptTooLongError` otherwise).
        """
        return self.submit_many([prompt_ids], params, loop=loop, wait=wait)[0]

    def submit_many(self, prompts: Sequence[Sequence[int]], params: SamplingParams | GenerationParams | None = None,
                    *, loop: asyncio.AbstractEventLoop | None = None, wait: bool = False) -> list[RequestHandle]:
        """Queue several generations at once, all or none (a full queue refuses the lot), so the next step
        can feed their prompts together; one handle per prompt. Arguments as for :meth:`submit`."""
        gp = params if isinstance(params, GenerationParams) else GenerationParams(params or SamplingParams())
        handles = [self._handle(p, gp, loop) for p in prompts]
        queued = [h for h in handles if not h.done]
        if len(queued) > self.config.max_queue:
            raise InputError(f"{len(queued)} prompts at once is more than the queue holds "
                             f"({self.config.max_queue}); submit them in smaller groups")
        if not queued:
            return handles
        self.start()
        with self._cv:
            while len(self._waiting) + len(queued) > self.config.max_queue:
                if not wait:
                    raise QueueFullError(f"the server is busy ({len(self._waiting)} requests waiting); "
                                         f"retry in a moment", retry_after=self._retry_after())
                self._cv.wait()
                if self._closed:
                    raise EngineClosedError("the engine was closed while the request waited for room")
            if self._closed:
                raise EngineClosedError("the engine is closed; create a new one")
            self._waiting.extend(queued)
            self._cv.notify_all()
        return handles

    def _handle(self, prompt_ids: Sequence[int], gp: GenerationParams,
                loop: asyncio.AbstractEventLoop | None) -> RequestHandle:
        """A checked request; one with nothing to generate (``max_new_tokens`` 0) is finished already."""
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise InputError("the prompt is empty; give at least one token")
        vocab = self.model.config.vocab_size
        if any(not 0 <= i < vocab for i in ids):
            raise InputError(f"prompt token ids must be in [0, {vocab})")
        if len(ids) >= self.context_length:
            raise PromptTooLongError(f"the prompt is {len(ids)} tokens but the context window is "
                                     f"{self.context_length} tokens; shorten it to at most "
                                     f"{self.context_length - 1} tokens")
        if gp.n > self.config.max_batch:
            raise InputError(f"n={gp.n} choices cannot run at once on this engine (max_batch "
                             f"{self.config.max_batch}); ask for at most {self.config.max_batch}")
        handle = RequestHandle(self, ids, gp, loop)
        if self._budget(handle) <= 0:
            for i in range(gp.n):
                handle._put(Delta(i, "", [], [] if gp.logprobs else None, "length"))
                handle._finish_choice(Choice("", "length", len(ids), 0, [], index=i,
                                             logprobs=[] if gp.logprobs else None))
        return handle

    def cancel(self, handle: RequestHandle) -> None:
        """Stop a request: a waiting one leaves the queue now, a running one frees its slots before the next
        forward pass. Its handle ends with finish reason ``"cancelled"`` for the choices still open."""
        with self._cv:
            if handle.done or handle.cancelled:
                return
            handle.cancelled = True
            if handle in self._waiting:
                self._waiting.remove(handle)
                self._end_cancelled(handle, [])
            else:
                self._cancelled.append(handle)
            self._cv.notify_all()

    def generate_batch(self, prompts: Sequence[str | Sequence[int]],
                       params: SamplingParams | GenerationParams | None = None,
                       truncate: bool = False) -> list[list[Choice]]:
        """Generate for every prompt (text, or token ids) at once; the choices of each prompt, in order.

        Prompts beyond the queue's room wait for it. ``truncate`` keeps the end of a prompt that does not
        fit the context window (else :class:`~gristmill.inference.stream.PromptTooLongError`).
        """
        handles: list[RequestHandle] = []
        try:
            ids = [fit_prompt(encode_prompt(self.tokenizer, p), self.context_length, truncate) for p in prompts]
            group = self.config.max_queue
            for start in range(0, len(ids), group):  # whole groups, so each can be fed together
                handles += self.submit_many(ids[start:start + group], params, wait=True)
            return [h.result() for h in handles]
        finally:
            for h in handles:
                self.cancel(h)

    def perplexity(self, ids: Sequence[int]) -> float:
        """Perplexity of token ids ``ids`` under this engine's weights: exp of the mean negative
        log-likelihood of ``ids[1:]``, each given the tokens before it (one window: at most
        :attr:`context_length` tokens). Touches no KV cache, so it may run beside the step loop."""
        ids = [int(i) for i in ids]
        if not 2 <= len(ids) <= self.context_length:
            raise InputError(f"perplexity needs 2 to {self.context_length} tokens, got {len(ids)}")
        with torch.inference_mode():
            logits = self._forward_packed([ids], None, every=True).float()  # [T,V]
            target = torch.tensor(ids[1:], dtype=torch.long, device=self.device)
            return float(torch.exp(F.cross_entropy(logits[:-1], target)))

    def _budget(self, handle: RequestHandle) -> int:
        return min(handle.params.sampling.max_new_tokens, self.context_length - handle.prompt_tokens)

    def _retry_after(self) -> int:
        """Seconds a refused client should wait: about one request's worth of the queue draining."""
        return 1

    # --- the step loop (runs on the engine thread)

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not (self._closed or self._waiting or self._cancelled or self._prefill
                               or self._running):
                        self._cv.wait()
                    if self._closed:
                        break
                try:
                    self._step()
                except Exception as e:  # a bug: fail what is in flight, keep serving new requests
                    self._fail_all(RuntimeError(f"generation failed: {type(e).__name__}: {e}"))
        self._fail_all(EngineClosedError("the engine was closed while the request ran"))

    def _step(self) -> None:
        self._drop_cancelled()
        budget = self.config.prefill_chunk
        if self._prefill is not None:  # a long prompt under way: its next chunk
            take = min(self._prefill.handle.prompt_tokens - self._prefill.done, budget)
            budget -= take
            self._prefill_chunk(self._prefill, take)
        # Waiting prompts that fit what is left of the budget whole are fed together in one forward pass.
        # A longer one starts only with a full budget, so its chunk boundaries stay at multiples of
        # prefill_chunk whatever else runs (the same computation alone or in company).
        fresh = self._admit(budget)
        if fresh:
            self._prefill_packed(fresh)
        elif self._prefill is None and budget == self.config.prefill_chunk:
            long = self._admit(None)
            if long:
                self._prefill = _Prefill(long[0])
                self._prefill_chunk(self._prefill, budget)
        self._drop_cancelled()
        if self._running:
            self._decode_step()
            self._drop_cancelled()

    def _admit(self, budget: int | None) -> list[RequestHandle]:
        """Take waiting requests from the head of the queue while their choices fit in the free slots:
        with a ``budget``, those whose whole prompts fit in it together; without, the head alone."""
        reserved = len(self._running) + (self._prefill.handle.n if self._prefill else 0)
        taken: list[RequestHandle] = []
        with self._cv:
            while self._waiting:
                h = self._waiting[0]
                if reserved + h.n > self.config.max_batch:
                    break
                if budget is not None:
                    if h.prompt_tokens > budget:
                        break
                    budget -= h.prompt_tokens
                taken.append(self._waiting.popleft())
                reserved += h.n
                if budget is None:
                    break
            if taken:
                self._cv.notify_all()  # a submitter blocked on a full queue may go on
        self.running_requests += len(taken)
        return taken

    def _prefill_chunk(self, job: _Prefill, take: int) -> None:
        """Feed ``take`` more prompt tokens into the staging slot; after the last, start the choices."""
        h = job.handle
        start, end = job.done, job.done + take
        self.cache.ensure(end, self._used())
        logits = self._forward_prefill(h.prompt_ids[start:end], start, last=end == h.prompt_tokens)
        job.done = end
        if logits is None:
            return
        self._prefill = None
        self._start(h, self.cache.staging, logits)
        self._compact()

    def _prefill_packed(self, handles: list[RequestHandle]) -> None:
        """Feed whole prompts in one forward pass, each into the slot of its first choice; start them."""
        slots, slot = [], len(self._running)
        for h in handles:
            slots.append(slot)
            slot += h.n
        self.cache.ensure(max(h.prompt_tokens for h in handles), self._used())
        logits = self._forward_packed([h.prompt_ids for h in handles], slots)  # [P,V]
        for h, first, row in zip(handles, slots, logits, strict=True):
            self._start(h, first, row)
        self._compact()  # only now: the slots of prompts not yet started must stay where they are

    def _start(self, h: RequestHandle, source: int, logits: torch.Tensor) -> None:
        """Give a prefilled request's choices their slots (its prompt's cache is in slot ``source``) and
        sample their first tokens from ``logits`` [V]."""
        budget = self._budget(h)
        seqs = []
        for i in range(h.n):
            seq = _Sequence(h, i, len(self._running), h.prompt_tokens, budget, self.tokenizer, self.device)
            if seq.slot != source:
                self.cache.copy(source, seq.slot, h.prompt_tokens)
            self._running.append(seq)
            seqs.append(seq)
        self._sample(seqs, logits.unsqueeze(0).expand(h.n, -1))  # finished ones leave at the next _compact

    def _decode_step(self) -> None:
        seqs = self._running
        self.cache.ensure(max(s.length for s in seqs) + 1, self._used())
        logits = self._forward_decode([s.pending for s in seqs], [s.length for s in seqs])  # [B,V]
        for s in seqs:
            s.length += 1
        self.steps += 1
        self._sample(seqs, logits)
        self._compact()

    def _sample(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        """Pick each sequence's next token from its row of ``logits`` [B,V] and hand out the deltas."""
        logits = logits.float()
        want = [i for i, s in enumerate(seqs) if s.logprobs is not None]
        logp = torch.log_softmax(logits[want], dim=-1) if want else None  # [len(want),V]
        logp_row = {i: r for r, i in enumerate(want)}
        now = time.perf_counter()
        for i, s in enumerate(seqs):
            tid = sample_next(s.penalize(logits[i]), s.sampling, s.generator)
            s.tokens.append(tid)
            s.counts[tid] += 1
            h = s.handle
            if h.first_token_at is None:
                h.first_token_at = now
            text, reason = s.text.push(tid)
            if reason is None and len(s.tokens) >= s.budget:
                rest, reason = s.text.close("length")
                text += rest
            entries = None
            if s.logprobs is not None:
                entries = []
                if not (reason == "stop" and tid in s.stop_ids):
                    entries.append(self._logprob(logp[logp_row[i]], tid, h.params.top_logprobs))  # type: ignore[index]
                s.logprobs.extend(entries)
            h._put(Delta(s.index, text, [tid], entries, reason))
            if reason is None:
                s.pending = tid
                continue
            s.finished = True
            if h._open == 1:  # its last choice: no longer running by the time the caller sees the end
                self.running_requests -= 1
            h._finish_choice(Choice(s.text.full, reason, h.prompt_tokens, len(s.tokens), list(s.tokens),
                                    index=s.index, logprobs=s.logprobs))

    @staticmethod
    def _logprob(row: torch.Tensor, token_id: int, top: int) -> TokenLogprob:
        entry = TokenLogprob(token_id, float(row[token_id]))
        if top:
            values, ids = torch.topk(row, min(top, row.numel()))
            entry.top = [(int(t), float(v)) for t, v in zip(ids.tolist(), values.tolist(), strict=True)]
        return entry

    def _compact(self) -> None:
        """Drop finished sequences and move the last live ones into the freed slots (slots stay packed)."""
        live = [s for s in self._running if not s.finished]
        if len(live) == len(self._running):
            return
        holes = sorted(s.slot for s in self._running if s.finished and s.slot < len(live))
        movers = [s for s in live if s.slot >= len(live)]
        for hole, s in zip(holes, movers, strict=True):
            self.cache.copy(s.slot, hole, s.length)
            s.slot = hole
        self._running = sorted(live, key=lambda s: s.slot)
        self.cache.shrink(self._used())

    def _used(self) -> int:
        """Positions of the cache that hold data in some slot (staging included)."""
        used = max((s.length for s in self._running), default=0)
        return max(used, self._prefill.done if self._prefill else 0)

    def _drop_cancelled(self) -> None:
        with self._cv:
            cancelled, self._cancelled = self._cancelled, []
        if not cancelled:
            return
        for h in cancelled:
            if h.done:  # finished on its own before the cancel was seen
                continue
            if self._prefill is not None and self._prefill.handle is h:
                self._prefill = None
            seqs = [s for s in self._running if s.handle is h and not s.finished]
            for s in seqs:
                s.finished = True
            self.running_requests -= 1  # only admitted requests reach this list (cancel() ends queued ones)
            self._end_cancelled(h, seqs)
        self._compact()

    def _end_cancelled(self, handle: RequestHandle, seqs: list[_Sequence]) -> None:
        """Close the open choices of a cancelled request with finish reason ``cancelled``."""
        by_index = {s.index: s for s in seqs}
        for i, c in enumerate(handle.choices):
            if c is not None:
                continue
            s = by_index.get(i)
            tokens = list(s.tokens) if s else []
            text = s.text.full[:s.text.sent] if s else ""
            handle._put(Delta(i, "", [], None, "cancelled"))
            handle._finish_choice(Choice(text, "cancelled", handle.prompt_tokens, len(tokens), tokens, index=i,
                                         logprobs=s.logprobs if s else None))

    def _fail_all(self, error: BaseException) -> None:
        """End every request in flight with ``error`` and reset the step state."""
        handles = {s.handle for s in self._running}
        if self._prefill is not None:
            handles.add(self._prefill.handle)
        for h in handles:
            h._fail(error)
        self._running, self._prefill = [], None
        self.running_requests = 0
        with self._cv:
            self._cancelled = []

    # --- forward passes (the packed blocks of ``self.blocks``, with this engine's cache)

    def _attention_inputs(self, layer: PackedBlock, x: torch.Tensor, rows: int, t: int, cos: torch.Tensor,
                          sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [rows,t,H,D], k and v [rows,t,K,D] of a block's attention, q and k rotated."""
        H, K, D = layer.n_head, layer.n_kv, layer.hd
        qkv = layer.qkv(layer.attn_norm(x))  # [rows,t,(H+2K)D]
        v = qkv[..., (H + K) * D:].view(rows, t, K, D)
        if layer.q_norm is None:  # q and k rotated together: one rotation instead of two
            qk = apply_rotary(qkv[..., :(H + K) * D].view(rows, t, H + K, D), cos, sin)
            return qk[:, :, :H], qk[:, :, H:], v
        q = layer.q_norm(qkv[..., :H * D].view(rows, t, H, D))
        k = layer.k_norm(qkv[..., H * D:(H + K) * D].view(rows, t, K, D))
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] of final hidden states [..., C]."""
        w, eps = self._final_norm
        logits = self.head(F.rms_norm(x, (x.size(-1),), w if w.dtype == x.dtype else w.to(x.dtype), eps))
        cap = self.model.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    def _forward_prefill(self, ids: list[int], start: int, last: bool) -> torch.Tensor | None:
        """Feed prompt tokens at positions start.. into the staging slot; logits [V] of the last one if
        ``last`` (earlier chunks only fill the cache, so the head is skipped)."""
        m, s = self.model, self.cache.staging
        T, end = len(ids), start + len(ids)
        cos, sin = m._rotary(start, T)  # [T, D/2]
        x = m.tok_emb(torch.tensor([ids], dtype=torch.long, device=self.device))  # [1,T,C]
        mask, causal = None, True
        if start > 0:  # query i (position start+i) sees keys 0..start+i
            causal = False
            mask = torch.arange(end, device=self.device)[None, :] <= (
                start + torch.arange(T, device=self.device)[:, None])  # [T,L]
        for i, layer in enumerate(self.blocks):
            q, k, v = self._attention_inputs(layer, x, 1, T, cos, sin)
            kc, vc = self.cache.k[i], self.cache.v[i]
            kc[s, :, start:end] = k[0].transpose(0, 1)  # [K,T,D]
            vc[s, :, start:end] = v[0].transpose(0, 1)
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2), kc[s:s + 1, :, :end], vc[s:s + 1, :, :end], attn_mask=mask, is_causal=causal,
                enable_gqa=layer.n_kv != layer.n_head)  # [1,H,T,D]
            x = x + layer.wo(y.transpose(1, 2).reshape(1, T, layer.n_head * layer.hd))
            x = x + layer.mlp(layer.mlp_norm(x))
        if not last:
            return None
        return self._head(x[0, -1])  # [V]

    def _forward_packed(self, prompts: list[list[int]], slots: list[int] | None,
                        every: bool = False) -> torch.Tensor:
        """Whole prompts side by side in one sequence, each attending only to itself (a block-diagonal
        causal mask), their keys and values stored from position 0 of their slots (not stored when
        ``slots`` is None); logits [P,V] of each prompt's last token, or [T,V] of every token if ``every``."""
        m = self.model
        lens = [len(p) for p in prompts]
        T = sum(lens)
        ids = torch.tensor([t for p in prompts for t in p], dtype=torch.long, device=self.device)
        m._rotary(0, max(lens))  # grows the rotary tables if needed
        pos = torch.cat([torch.arange(n, device=self.device) for n in lens])  # [T]
        cos, sin = m.rope_cos[pos], m.rope_sin[pos]  # [T, D/2]
        mask, causal = None, True  # one prompt: plain causal attention, as the single-request path
        if len(prompts) > 1:
            seg = torch.repeat_interleave(torch.arange(len(lens), device=self.device),
                                          torch.tensor(lens, device=self.device))
            mask, causal = (seg[:, None] == seg[None, :]) & (pos[None, :] <= pos[:, None]), False  # [T,T]
        x = m.tok_emb(ids)[None]  # [1,T,C]
        for i, layer in enumerate(self.blocks):
            q, k, v = self._attention_inputs(layer, x, 1, T, cos, sin)
            if slots is not None:
                kc, vc = self.cache.k[i], self.cache.v[i]
                start = 0
                for n, slot in zip(lens, slots, strict=True):
                    kc[slot, :, :n] = k[0, start:start + n].transpose(0, 1)  # [K,n,D]
                    vc[slot, :, :n] = v[0, start:start + n].transpose(0, 1)
                    start += n
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask, is_causal=causal,
                                               enable_gqa=layer.n_kv != layer.n_head)  # [1,H,T,D]
            x = x + layer.wo(y.transpose(1, 2).reshape(1, T, layer.n_head * layer.hd))
            x = x + layer.mlp(layer.mlp_norm(x))
        if every:
            return self._head(x[0])  # [T,V]
        last = torch.tensor(lens, device=self.device).cumsum(0) - 1
        return self._head(x[0, last])  # [P,V]

    def _forward_decode(self, tokens: list[int], positions: list[int], warm_up: bool = False) -> torch.Tensor:
        """One token per running sequence (sequence i in slot i, its token at positions[i]); logits [B,V].

        This runs once per generated token and, at one row, costs about as much in per-op dispatch as in
        arithmetic, so it is written for few ops: the residual stream stays [B,C], the rotary factors are
        broadcast once per step rather than per layer, each block's weights and sizes are unpacked once (at
        start-up, :attr:`_decode_layers`), norms call the kernel directly, and when every sequence is at the
        same position (always so for one stream) the cache is written through a view rather than advanced
        indexing. Every value goes through the same kernels and roundings as in the plain form (module calls,
        ``apply_rotary``, indexed cache writes), so the logits are bit-identical. With ``compile``, a single
        stream goes through the compiled :meth:`_decode_graph` instead."""
        m, B = self.model, len(tokens)
        L = max(positions) + 1
        m._rotary(0, L)  # grows the rotary tables if needed
        same = min(positions) == L - 1
        if same:  # one position for all: a slice of the tables, broadcast over the B rows
            cos, sin = m.rope_cos[L - 1:L], m.rope_sin[L - 1:L]  # [1, D/2]
            mask, pos, rows = None, None, None  # one length: attend over everything (the single-request path)
        else:
            pos = torch.tensor(positions, dtype=torch.long, device=self.device)
            rows = torch.arange(B, device=self.device)
            cos, sin = m.rope_cos[pos], m.rope_sin[pos]  # [B, D/2]: one position per sequence
            mask = (torch.arange(L, device=self.device)[None, :] <= pos[:, None]).view(B, 1, 1, L)
        # [B|1,1,D]: one factor for every head, over both halves; sin negated where the first half subtracts
        cos, sin = torch.cat([cos, cos], -1)[:, None], torch.cat([-sin, sin], -1)[:, None]
        x = m.tok_emb(torch.tensor(tokens, dtype=torch.long, device=self.device))  # [B,C]
        c = self.cache
        if self._compiled is not None and B == 1 and L >= _COMPILED_FROM:
            k_past, v_past = c.k_all[:, :1, :, :L - 1], c.v_all[:, :1, :, :L - 1]  # [n_layer,1,K,L-1,D]
            if warm_up:  # one graph for every past length (and cache capacity)
                torch._dynamo.mark_dynamic(k_past, 3)
                torch._dynamo.mark_dynamic(v_past, 3)
            logits, k_new, v_new = self._compiled(x, cos, sin, k_past, v_past)
            c.k_all[:, :1, :, L - 1] = k_new  # [n_layer,1,K,D]
            c.v_all[:, :1, :, L - 1] = v_new
            return logits

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            kc, vc = c.k[i][:B, :, :L], c.v[i][:B, :, :L]  # [B,K,L,D]
            if same:
                kc[:, :, L - 1] = k  # [B,K,D] at the shared position
                vc[:, :, L - 1] = v
            else:
                kc[rows, :, pos] = k  # [B,K,D] at each sequence's own position
                vc[rows, :, pos] = v
            return F.scaled_dot_product_attention(q.unsqueeze(2), kc, vc, attn_mask=mask,
                                                  enable_gqa=k.size(1) != q.size(1))  # [B,H,1,D]

        return self._decode_blocks(x, cos, sin, attend)

    def _decode_graph(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_past: torch.Tensor,
                      v_past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A single stream's decode step as a function of tensors that mutates nothing, for ``torch.compile``:
        keys and values of the past positions in, k_past and v_past [n_layer,1,K,L-1,D]; logits [1,V] and the
        new position's keys and values [n_layer,1,K,D] out, for the caller to store."""
        new_k, new_v = [], []

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            new_k.append(k)
            new_v.append(v)
            return F.scaled_dot_product_attention(
                q.unsqueeze(2), torch.cat([k_past[i], k.unsqueeze(2)], 2), torch.cat([v_past[i], v.unsqueeze(2)], 2),
                enable_gqa=k.size(1) != q.size(1))  # [1,H,1,D]

        logits = self._decode_blocks(x, cos, sin, attend)
        return logits, torch.stack(new_k), torch.stack(new_v)

    def _decode_blocks(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The blocks and head over one token per sequence, x [B,C]; ``attend(i, q, k, v)`` is block ``i``'s
        attention over the cache (q [B,H,D], k and v [B,K,D] of the new position; returns [B,H,1,D])."""
        B, shape = x.size(0), (x.size(-1),)
        for i, qkv_of, wo, mlp, attn_norm, mlp_norm, q_norm, k_norm, H, K, D in self._decode_layers:
            qkv = qkv_of(F.rms_norm(x, shape, *attn_norm))  # [B,(H+2K)D]
            v = qkv[:, (H + K) * D:].view(B, K, D)
            if q_norm is None:  # q and k rotated together: one rotation instead of two
                qk = _rotate(qkv[:, :(H + K) * D].view(B, H + K, D), cos, sin)
                q, k = qk[:, :H], qk[:, H:]  # [B,H,D], [B,K,D]
            else:
                q = _rotate(F.rms_norm(qkv[:, :H * D].view(B, H, D), (D,), *q_norm), cos, sin)
                k = _rotate(F.rms_norm(qkv[:, H * D:(H + K) * D].view(B, K, D), (D,), *k_norm), cos, sin)
            y = attend(i, q, k, v)
            x = x + wo(y.reshape(B, H * D))
            x = x + mlp(F.rms_norm(x, shape, *mlp_norm))
        return self._head(x)  # [B,V]


_COMPILED_FROM = 3
"""Shortest sequence a compiled decode step takes (a past of at least 2 positions: a length-1 dimension would be
specialised, and a second graph compiled); shorter ones run eagerly."""


def _norm_of(norm: torch.nn.Module | None, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, float] | None:
    """An RMSNorm as (weight, eps), the weight detached (and in ``dtype`` if given)."""
    if norm is None:
        return None
    w = norm.weight.detach()
    return (w if dtype is None else w.to(dtype)), norm.eps


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``apply_rotary`` for x [B,N,D] in fewer ops; cos = [cos, cos] and sin = [-sin, sin], [B|1,1,D] float32.

    The same bits: ``x1*cos + x2*(-sin)`` is ``x1*cos - x2*sin`` exactly, bf16 inputs widen exactly in the
    float32 products, and swapping the halves (roll) replaces the chunk and concatenation."""
    return (x * cos + x.roll(x.size(-1) // 2, -1) * sin).type_as(x)


# ----------------------------------------------------------------------------------------------------
# Choosing the weight format

QUALITY_TEXT = (
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in "
    "Liberty, and dedicated to the proposition that all men are created equal. Now we are engaged in a great "
    "civil war, testing whether that nation, or any nation so conceived and so dedicated, can long endure. We "
    "are met on a great battle-field of that war. We have come to dedicate a portion of that field, as a final "
    "resting place for those who here gave their lives that that nation might live. It is altogether fitting "
    "and proper that we should do this. But, in a larger sense, we can not dedicate, we can not consecrate, we "
    "can not hallow this ground. The brave men, living and dead, who struggled here, have consecrated it, far "
    "above our poor power to add or detract. The world will little note, nor long remember what we say here, "
    "but it can never forget what they did here."
)
"""The fixed text (the Gettysburg Address, public domain) whose perplexity ``auto`` compares across formats."""

MAX_PERPLEXITY_RISE = 0.01
"""``auto`` keeps a faster format only if its perplexity on :data:`QUALITY_TEXT` is at most 1% above fp32's."""


def _candidates(device: torch.device) -> list[str]:
    """Faster formats worth trying on ``device``, best first (measured by benchmarks/decode_speed.py).

    On a CPU, int4 first: fewest bytes, fastest single stream (~2x bf16) and as fast as bf16 for batches
    of 16; it keeps its perplexity only on weights that were 4-bit already (an imported Q4 GGUF), so on
    others the check falls through to bf16. Not int8: ~1.3x bf16's single stream but ~1.4x slower for
    batches (torch's int8 kernel is a matrix-vector product), and its perplexity sits ~1% above fp32's
    where bf16's stays within 0.2%. Without native bf16 (AVX-512 BF16 / AMX) all are slower than fp32."""
    if device.type == "cuda":
        return ["bf16"]
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return ["int4", "bf16"]
    return []


def resolve_weights(model: GPT, tokenizer: Tokenizer, weights: str) -> tuple[str, dict[str, Any] | None]:
    """The weight format to run for ``weights`` (fp32, bf16, int8, int4 or auto) and, for auto, the quality check:
    ``{"fp32": ppl, "<format>": ppl, ...}`` perplexities on :data:`QUALITY_TEXT`, ``"chosen"``. ``auto``
    takes the first of the device's faster formats (:func:`_candidates`) whose perplexity is within 1% of
    fp32's, else fp32.
    ConfigError if an explicit format cannot run on the model's device."""
    device = model.tok_emb.weight.device
    if weights != "auto":
        try:
            check_format(weights, device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return weights, None
    candidates = _candidates(device)
    ids = tokenizer.encode(QUALITY_TEXT).ids[:model.config.block_size]
    if not candidates or len(ids) < 2 or model.tok_emb.weight.dtype != torch.float32:
        return "fp32", None
    check: dict[str, Any] = {"fp32": perplexity(model, tokenizer, ids, "fp32")}
    for fmt in candidates:
        try:
            check[fmt] = perplexity(model, tokenizer, ids, fmt)
        except ValueError:  # this model cannot run in it (unmerged LoRA layers, int4 on odd widths)
            continue
        if check[fmt] <= check["fp32"] * (1 + MAX_PERPLEXITY_RISE):
            check["chosen"] = fmt
            return fmt, check
    check["chosen"] = "fp32"
    return "fp32", check


def perplexity(model: GPT, tokenizer: Tokenizer, ids: Sequence[int], weights: str) -> float:
    """Perplexity of token ids ``ids`` (each predicted from those before it, in one window of at most
    ``block_size`` tokens) with the model's weights in format ``weights``, through the engine's forward pass."""
    engine = Engine(model, tokenizer, EngineConfig(max_batch=1, max_queue=1, weights=weights))
    return engine.perplexity(ids)


def generate_batch(model: GPT, tokenizer: Tokenizer, prompts: Sequence[str | Sequence[int]],
                   params: SamplingParams | GenerationParams | None = None, *, config: EngineConfig | None = None,
                   truncate: bool = False) -> list[list[Choice]]:
    """Generate for many prompts with continuous batching and return the choices of each prompt.

    A throw-away :class:`Engine` for library callers (generate, evaluation, a synth teacher); keep an
    engine around instead when calling repeatedly.
    """
    with Engine(model, tokenizer, config) as engine:
        return engine.generate_batch(prompts, params, truncate)
