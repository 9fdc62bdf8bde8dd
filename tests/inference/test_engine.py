"""engine: continuous batching gives what the single-request path gives, alone and in company; sampling
options, cancellation, the bounded queue and chunked prefill behave as promised.

The model is the session's tiny trained model (``tiny_model_dir``, context 64 tokens); tests that need
long sequences use an untrained model of the same tokenizer with a 700-token context, built in memory.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import torch

from gristmill.errors import InputError
from gristmill.inference.engine import (
    Engine,
    EngineClosedError,
    EngineConfig,
    GenerationParams,
    QueueFullError,
    SlotCache,
    generate_batch,
    token_bytes,
)
from gristmill.inference.sampling import SamplingParams
from gristmill.inference.stream import PromptTooLongError, generate
from gristmill.model.config import ModelConfig
from gristmill.model.gpt import GPT
from gristmill.model.io import load_for_inference

PROMPTS = ["HAMLET.\nTo be", "The", "Zürich, Tōkyō", "Enter GHOST.\n", "O, that this too too solid flesh",
           "What art thou that usurp'st this time of night,", "\n\n", "x"]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_for_inference(tiny_model_dir, "cpu")


@pytest.fixture(scope="module")
def long_model(loaded):
    """An untrained model with a 700-token context (outputs are noise, but well-defined noise)."""
    _, tok = loaded
    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), block_size=700, n_layer=2, n_head=4, n_kv_head=2,
                      n_embd=32, qk_norm=True, tie_embeddings=True)
    return GPT(cfg).eval(), tok


def ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def wait_until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for the engine"
        time.sleep(0.005)


def test_greedy_equals_the_single_request_path_alone_and_in_a_batch(loaded):
    model, tok = loaded
    params = SamplingParams(max_new_tokens=40, temperature=0, stop_token_ids=())
    expected = [generate(model, tok, p, params) for p in PROMPTS]
    # two slots for eight prompts: requests wait, join the running batch and leave it at different steps;
    # a prefill chunk of 8 splits the longer prompts over several steps
    with Engine(model, tok, EngineConfig(max_batch=2, prefill_chunk=8)) as engine:
        alone = [engine.submit(ids(tok, p), params).result()[0] for p in PROMPTS]
        handles = [engine.submit(ids(tok, p), params) for p in PROMPTS]
        batched = [h.result()[0] for h in handles]
        assert engine.running_requests == 0 and engine.waiting_requests == 0
    for e, a, b in zip(expected, alone, batched, strict=True):
        assert a.token_ids == e.token_ids and b.token_ids == e.token_ids
        assert b.text == e.text and b.finish_reason == e.finish_reason == "length"
        assert b.prompt_tokens == e.prompt_tokens and b.completion_tokens == 40


def test_prompts_fed_together_match_the_single_request_path(loaded):
    model, tok = loaded
    # submitted together, the prompts are fed in one forward pass (each attending only to itself); the
    # first request stops at its very first token, so its slot is freed while the others start
    first = generate(model, tok, PROMPTS[0], SamplingParams(max_new_tokens=1, temperature=0)).token_ids[0]
    params = SamplingParams(max_new_tokens=20, temperature=0, stop_token_ids=(first,))
    expected = [generate(model, tok, p, params) for p in PROMPTS]
    with Engine(model, tok, EngineConfig(max_batch=2 * len(PROMPTS), prefill_chunk=128)) as engine:
        handles = engine.submit_many([ids(tok, p) for p in PROMPTS], GenerationParams(params, n=2))
        results = [h.result() for h in handles]
        # one step fed every prompt and sampled their first tokens; decoding then ran them side by side
        assert engine.steps == max(len(e.token_ids) for e in expected) - 1
    assert results[0][0].token_ids == [first] and results[0][0].finish_reason == "stop"
    for e, r in zip(expected, results, strict=True):
        assert [c.token_ids for c in r] == [e.token_ids] * 2 and [c.text for c in r] == [e.text] * 2
    with Engine(model, tok, EngineConfig(max_queue=3)) as engine, pytest.raises(InputError, match="smaller groups"):
        engine.submit_many([[5]] * 4)


def test_sampled_text_stop_strings_and_seeds_match_the_single_request_path(loaded):
    model, tok = loaded
    params = SamplingParams(max_new_tokens=30, temperature=1.0, top_p=0.9, top_k=50, seed=5, stop=["\n\n", "th"])
    expected = [generate(model, tok, p, params) for p in PROMPTS]
    results = generate_batch(model, tok, PROMPTS, params, config=EngineConfig(max_batch=3))
    for e, [c] in zip(expected, results, strict=True):
        assert (c.token_ids, c.text, c.finish_reason) == (e.token_ids, e.text, e.finish_reason)
    assert any(c.finish_reason == "stop" for [c] in results)
    assert not any("th" in c.text or "\n\n" in c.text for [c] in results)


def test_deltas_join_to_the_text_and_every_choice_ends_once(loaded):
    model, tok = loaded
    params = GenerationParams(SamplingParams(max_new_tokens=25, temperature=1.5, seed=1, stop_token_ids=()), n=3)
    with Engine(model, tok, EngineConfig(max_batch=4)) as engine:
        handle = engine.submit(ids(tok, "Zürich, Tōkyō"), params)
        deltas = list(handle)
    for i, c in enumerate(handle.choices):
        mine = [d for d in deltas if d.index == i]
        assert "".join(d.text for d in mine) == c.text
        assert [d.finish_reason for d in mine].count("length") == 1 and mine[-1].finish_reason == "length"
        assert [t for d in mine for t in d.token_ids] == c.token_ids
    # choice i samples with seed + i, like a single request with that seed
    for i, c in enumerate(handle.choices):
        alone = generate(model, tok, "Zürich, Tōkyō", SamplingParams(max_new_tokens=25, temperature=1.5, seed=1 + i,
                                                                    stop_token_ids=()))
        assert c.token_ids == alone.token_ids
    assert len({tuple(c.token_ids) for c in handle.choices}) == 3


def reference_greedy_with_penalties(model: GPT, prompt: list[int], n: int, presence: float,
                                    frequency: float) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding without any cache, penalties applied by hand; also the raw log-probabilities."""
    seq, out, logps = list(prompt), [], []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq]))[0][0, -1].float()
            logps.append(torch.log_softmax(logits, -1))
            for t in set(out):
                logits[t] -= presence + frequency * out.count(t)
            out.append(int(logits.argmax()))
            seq.append(out[-1])
    return out, logps


def test_penalties_and_logprobs_follow_their_definitions(loaded):
    model, tok = loaded
    prompt = ids(tok, "HAMLET.\nTo be")
    sampling = SamplingParams(max_new_tokens=20, temperature=0, stop_token_ids=())
    params = GenerationParams(sampling, presence_penalty=0.7, frequency_penalty=0.4, logprobs=True, top_logprobs=3)
    with Engine(model, tok) as engine:
        [c] = engine.submit(prompt, params).result()
        [plain] = engine.submit(prompt, GenerationParams(sampling)).result()
    expected, logps = reference_greedy_with_penalties(model, prompt, 20, 0.7, 0.4)
    assert c.token_ids == expected and c.token_ids != plain.token_ids
    assert plain.logprobs is None and len(c.logprobs) == 20
    for entry, tid, ref in zip(c.logprobs, c.token_ids, logps, strict=True):
        assert entry.token_id == tid and entry.logprob == pytest.approx(float(ref[tid]), abs=1e-4)
        assert [t for t, _ in entry.top] == ref.topk(3).indices.tolist()
        assert all(a >= b for (_, a), (_, b) in zip(entry.top, entry.top[1:], strict=False))


def test_stop_token_ids_end_a_choice_and_stay_out_of_the_text(loaded):
    model, tok = loaded
    prompt = ids(tok, "HAMLET.\nTo be")
    free = generate(model, tok, prompt, SamplingParams(max_new_tokens=20, temperature=0, stop_token_ids=()))
    stop_at = free.token_ids[5]
    params = GenerationParams(SamplingParams(max_new_tokens=20, temperature=0, stop_token_ids=(stop_at,)),
                              logprobs=True)
    [c] = generate_batch(model, tok, [prompt], params)[0]
    first = free.token_ids.index(stop_at)
    assert c.finish_reason == "stop" and c.token_ids == free.token_ids[:first + 1]
    assert c.text == tok.decode(free.token_ids[:first]) and len(c.logprobs) == first


def test_chunked_prefill_lets_running_streams_go_on(loaded):
    model, tok = loaded
    # a long prompt fed 4 tokens per step: the running stream gets a token at every one of those steps
    long_prompt = (ids(tok, "O, that this too too solid flesh would melt, thaw, and resolve itself into a dew!") * 3)[:48]
    runner = SamplingParams(max_new_tokens=60, temperature=0, stop_token_ids=())
    with Engine(model, tok, EngineConfig(max_batch=2, prefill_chunk=4)) as engine:
        running = engine.submit(ids(tok, "The"), runner)
        next(iter(running))
        before = engine.steps
        late = engine.submit(long_prompt, SamplingParams(max_new_tokens=3, temperature=0, stop_token_ids=()))
        first = next(iter(late))
        during = engine.steps - before
        assert first.token_ids and during >= math.ceil(len(long_prompt) / 4) - 1
        assert late.result()[0].completion_tokens == 3
        assert running.result()[0].completion_tokens == 60


def test_cancel_frees_the_slot_at_once_and_waiting_requests_can_be_cancelled(long_model):
    model, tok = long_model
    params = SamplingParams(max_new_tokens=650, temperature=0, stop_token_ids=())
    with Engine(model, tok, EngineConfig(max_batch=1, max_queue=2)) as engine:
        a = engine.submit([5, 6, 7], params)
        wait_until(lambda: engine.running_requests == 1)
        b = engine.submit([8, 9], params)  # waits: the only slot is taken
        c = engine.submit([10], params)
        with pytest.raises(QueueFullError) as full:
            engine.submit([11], params)
        assert full.value.retry_after >= 1
        b.cancel()
        assert engine.waiting_requests == 1 and b.result()[0].finish_reason == "cancelled"
        a.cancel()
        [ca] = a.result()
        assert ca.finish_reason == "cancelled" and ca.completion_tokens < 650
        wait_until(lambda: c.first_token_at is not None)  # the freed slot went to the next request
        c.cancel()
        assert c.result()[0].finish_reason == "cancelled"
        wait_until(lambda: engine.running_requests == 0)


def test_long_sequences_grow_the_cache_and_match_the_single_request_path(long_model):
    model, tok = long_model
    long_prompt = [(7 * i) % 300 + 4 for i in range(300)]
    params = SamplingParams(max_new_tokens=250, temperature=0, stop_token_ids=())
    expected = generate(model, tok, long_prompt, params)
    short = generate(model, tok, [5, 6], SamplingParams(max_new_tokens=30, temperature=0, stop_token_ids=()))
    with Engine(model, tok, EngineConfig(max_batch=3, prefill_chunk=64)) as engine:
        assert engine.cache.capacity == 256
        h = engine.submit(long_prompt, params)
        s = engine.submit([5, 6], SamplingParams(max_new_tokens=30, temperature=0, stop_token_ids=()))
        assert h.result()[0].token_ids == expected.token_ids
        assert s.result()[0].token_ids == short.token_ids
        wait_until(lambda: engine.cache.capacity == 256)  # grew to 700 for the long one, shrank when it left


def test_slot_cache_copies_and_keeps_data_across_growth():
    cache = SlotCache(n_layer=2, slots=2, n_kv=1, head_dim=4, max_len=100, device=torch.device("cpu"),
                      dtype=torch.float32, min_capacity=8)
    cache.k[1][0, :, :8] = torch.arange(32.0).view(1, 8, 4)
    cache.ensure(20, used=8)
    assert cache.capacity == 32 and torch.equal(cache.k[1][0, :, :8], torch.arange(32.0).view(1, 8, 4))
    cache.copy(0, cache.staging, 8)
    assert torch.equal(cache.k[1][cache.staging, :, :8], cache.k[1][0, :, :8])
    cache.ensure(100, used=8)
    assert cache.capacity == 100
    cache.shrink(used=8)
    assert cache.capacity == 16 and torch.equal(cache.k[1][0, :, :8], torch.arange(32.0).view(1, 8, 4))
    cache.shrink(used=0)  # nothing running: back to the smallest size, not stuck at twice it
    assert cache.capacity == 8


def test_bad_requests_are_refused_before_they_queue(loaded):
    model, tok = loaded
    with Engine(model, tok, EngineConfig(max_batch=2)) as engine:
        with pytest.raises(PromptTooLongError, match="at most 63"):
            engine.submit(list(range(10, 74)), SamplingParams())
        with pytest.raises(InputError, match="empty"):
            engine.submit([], SamplingParams())
        with pytest.raises(InputError, match=r"\[0, "):
            engine.submit([10**6], SamplingParams())
        with pytest.raises(InputError, match="at most 2"):
            engine.submit([5], GenerationParams(n=3))
        # nothing to generate: done at once
        [c] = engine.submit([5], SamplingParams(max_new_tokens=0)).result()
        assert (c.text, c.finish_reason, c.completion_tokens) == ("", "length", 0)
    with pytest.raises(ValueError, match="max_seq_len"):
        Engine(model, tok, EngineConfig(max_seq_len=1000))


def test_closing_ends_waiting_requests_and_a_blocked_submit_goes_on(long_model):
    model, tok = long_model
    params = SamplingParams(max_new_tokens=600, temperature=0, stop_token_ids=())
    engine = Engine(model, tok, EngineConfig(max_batch=1, max_queue=1))
    running = engine.submit([5], params)
    wait_until(lambda: engine.running_requests == 1)
    waiting = engine.submit([6], params)
    got: list[object] = []
    blocked = threading.Thread(target=lambda: got.append(_submit_or_error(engine, [7], params)))
    blocked.start()
    time.sleep(0.05)
    engine.close()
    blocked.join(5)
    assert isinstance(got[0], EngineClosedError)
    with pytest.raises(EngineClosedError):
        waiting.result()
    with pytest.raises(EngineClosedError):
        running.result()


def _submit_or_error(engine: Engine, prompt: list[int], params: SamplingParams) -> object:
    try:
        return engine.submit(prompt, params, wait=True)
    except EngineClosedError as e:
        return e


def test_token_bytes_rebuild_multibyte_characters(loaded):
    _, tok = loaded
    text = "Zürich, Tōkyō 東京都"
    pieces = ids(tok, text)
    assert b"".join(token_bytes(tok, t) for t in pieces) == text.encode("utf-8")
    assert token_bytes(tok, 2) == b"<|im_end|>"
