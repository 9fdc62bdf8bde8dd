"""generate: KV-cached sampling matches a full forward pass, streams whole characters, stops where told.

The model is real but tiny: a byte-level BPE tokenizer trained on Shakespeare (plus some non-ASCII text,
so multi-byte characters are split across tokens), and a 2-layer GPT trained for a few dozen steps so its
greedy output is text-like. It is built once per test session and shared by the evaluate and serve tests
(the ``tiny_model_dir`` fixture in conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import BLOCK, UNICODE

from gristmill.errors import InputError
from gristmill.formats.vocab import EOT_ID, IM_END_ID
from gristmill.inference.sampling import IncrementalDecoder, SamplingParams, sample_next
from gristmill.inference.stream import PromptTooLongError, generate, stream
from gristmill.model.gpt import GPT
from gristmill.model.io import load_for_inference, resolve_model_dir


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_for_inference(tiny_model_dir, "cpu")


def reference_greedy(model: GPT, ids: list[int], n: int) -> list[int]:
    """Greedy decoding without the cache: a full forward pass over the whole sequence per token."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(ids):]


def test_greedy_with_cache_matches_full_forward_and_is_deterministic(loaded):
    model, tok = loaded
    prompt = "HAMLET.\nTo be"
    params = SamplingParams(max_new_tokens=30, temperature=0, stop_token_ids=())
    a = generate(model, tok, prompt, params)
    b = generate(model, tok, prompt, params)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.token_ids == reference_greedy(model, tok.encode(prompt).ids, 30)
    assert a.finish_reason == "length" and a.completion_tokens == 30
    assert a.prompt_tokens == len(tok.encode(prompt).ids)
    assert a.text == tok.decode(a.token_ids)
    assert a.text.strip(), "a briefly trained model should produce some text"


def test_seeded_sampling_is_reproducible_and_seeds_differ(loaded):
    model, tok = loaded
    runs = [generate(model, tok, "The", SamplingParams(max_new_tokens=25, temperature=1.0, seed=s,
                                                       stop_token_ids=())).token_ids for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.tensor([0.1, 2.0, 1.9, -1.0])
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sample_next(logits, SamplingParams(temperature=5.0, top_k=1), gen) == 1
        assert sample_next(logits, SamplingParams(temperature=5.0, top_p=0.01), gen) == 1
    # top_p=0.85 keeps the two leading tokens (0.47 + 0.43 of the mass) and nothing else
    seen = {sample_next(logits, SamplingParams(temperature=1.0, top_p=0.85), gen) for _ in range(200)}
    assert seen == {1, 2}


def test_stream_deltas_concatenate_to_the_text_and_never_split_characters(loaded):
    model, tok = loaded
    for seed in range(4):  # temperature 1.5 samples odd byte tokens, so partial characters do occur
        s = stream(model, tok, "Zürich, Tōkyō", SamplingParams(max_new_tokens=40, temperature=1.5, seed=seed,
                                                              stop_token_ids=()))
        deltas = list(s)
        # Emitted text is never taken back, so had a delta cut a character in two (showing U+FFFD where
        # the finished text has the character), the concatenation would differ from the full decode.
        assert "".join(deltas) == s.text == tok.decode(s.token_ids)
        assert len(deltas) > 5


def test_incremental_decoder_holds_back_partial_utf8(loaded):
    _, tok = loaded
    ids = tok.encode(UNICODE).ids
    assert len(ids) > len(tok.encode(UNICODE.encode("ascii", "ignore").decode()).ids)
    # at least one token of this text is part of a multi-byte character, i.e. does not decode on its own
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == UNICODE
    assert not any("\ufffd" in p for p in pieces)


def test_stop_strings_end_the_text_before_the_stop(loaded):
    model, tok = loaded
    base = SamplingParams(max_new_tokens=40, temperature=0, stop_token_ids=())
    full = generate(model, tok, "HAMLET.\n", base).text
    assert len(full) > 6
    stop = full[3:6]  # something the greedy output is known to contain
    params = SamplingParams(max_new_tokens=40, temperature=0, stop=[stop, "never-appears"], stop_token_ids=())
    s = stream(model, tok, "HAMLET.\n", params)
    deltas = list(s)
    assert s.text == full[:full.index(stop)] == "".join(deltas)
    assert s.finish_reason == "stop"


def test_stop_token_ends_generation_and_is_not_in_the_text(loaded):
    model, tok = loaded
    full = generate(model, tok, "HAMLET.\n", SamplingParams(max_new_tokens=20, temperature=0, stop_token_ids=()))
    stop_id = full.token_ids[5]
    out = generate(model, tok, "HAMLET.\n", SamplingParams(max_new_tokens=20, temperature=0,
                                                           stop_token_ids=(stop_id,)))
    first = full.token_ids.index(stop_id)
    assert out.finish_reason == "stop"
    assert out.token_ids == full.token_ids[:first + 1]
    assert out.text == tok.decode(full.token_ids[:first])
    assert set(SamplingParams().stop_token_ids) == {EOT_ID, IM_END_ID}


def test_context_window_limits_generation_and_long_prompts(loaded):
    model, tok = loaded
    prompt = list(range(10, 10 + BLOCK - 5))  # leaves room for 5 tokens
    out = generate(model, tok, prompt, SamplingParams(max_new_tokens=50, temperature=0, stop_token_ids=()))
    assert out.completion_tokens == 5 and out.finish_reason == "length"
    too_long = list(range(10, 10 + BLOCK + 20))
    with pytest.raises(PromptTooLongError, match="context window"):
        generate(model, tok, too_long, SamplingParams(max_new_tokens=5))
    kept = generate(model, tok, too_long, SamplingParams(max_new_tokens=5, temperature=0, stop_token_ids=()),
                    truncate=True)
    assert kept.prompt_tokens == BLOCK // 2 and kept.completion_tokens == 5
    assert kept.token_ids == reference_greedy(model, too_long[-(BLOCK // 2):], 5)


def test_empty_prompt_starts_from_end_of_text(loaded):
    model, tok = loaded
    out = generate(model, tok, "", SamplingParams(max_new_tokens=3, temperature=0, stop_token_ids=()))
    assert out.prompt_tokens == 1 and out.completion_tokens == 3


def test_resolve_model_dir_prefers_finetune(tmp_path: Path, tiny_model_dir: Path):
    with pytest.raises(InputError, match="no model found"):
        resolve_model_dir(tmp_path)
    run = tiny_model_dir.parent.parent
    assert resolve_model_dir(run) == run / "train" / "model"
    ft = tmp_path / "run" / "finetune" / "model"
    ft.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (ft / name).write_bytes((tiny_model_dir / name).read_bytes())
    (tmp_path / "run" / "train").symlink_to(run / "train")
    assert resolve_model_dir(tmp_path / "run") == ft
    assert resolve_model_dir(tmp_path / "run", "train") == tmp_path / "run" / "train" / "model"
    with pytest.raises(InputError, match="not one of"):
        resolve_model_dir(tmp_path / "run", "best")


def test_generation_gives_the_model_back_in_training_mode(loaded):
    model, tok = loaded
    model.train()
    try:
        generate(model, tok, "To be", SamplingParams(max_new_tokens=3, temperature=0))
        assert model.training
    finally:
        model.eval()
