"""Exporting to GGUF: Gristmill's importer reads the file back to the same weights (f32 exactly; f16 and
Q8_0 to their rounding), the metadata is what llama.cpp reads, and llama.cpp itself (llama-cpp-python)
tokenises like Gristmill and greedy-decodes the same tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gristmill.errors import InputError
from gristmill.formats.chat import render_chat
from gristmill.inference.sampling import SamplingParams
from gristmill.inference.stream import generate_ids
from gristmill.model.convert.export_gguf import export_gguf
from gristmill.model.convert.exported import CHATML_TEMPLATE, ExportSource, load_source
from gristmill.model.convert.gguf import import_gguf

gguf = pytest.importorskip("gguf")

TEXTS = ["To be, or not to be: that is the question.", "  2024 — naïve café, 東京都 🙂\n\n\tend ",
         "a  b   c\n\n\n d 1234567", "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"]
PROMPT = [{"role": "user", "content": "Who was Hamlet?"}]


def capped(src: ExportSource, logits: torch.Tensor) -> torch.Tensor:
    cap = src.dropped_softcap
    return cap * torch.tanh(logits / cap) if cap else logits


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0]


def greedy(model, ids: list[int], n: int = 24) -> list[int]:
    return list(generate_ids(model, ids, SamplingParams(max_new_tokens=n, temperature=0)))


def test_f32_round_trip_is_exact(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = load_source(tiny_model_dir, chat=True, allow_softcap_drop=True)
    info = export_gguf(src, tmp_path / "m.gguf", dtype="f32", license="CC0-1.0", description="tiny")
    assert info == {"bytes": (tmp_path / "m.gguf").stat().st_size, "tensor_types": {"F32": 21}}

    back, tok, meta = import_gguf(tmp_path / "m.gguf")
    a, b = src.model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = src.tokenizer.encode(render_chat(PROMPT, True) + TEXTS[0]).ids
    assert torch.equal(capped(src, logits(back, ids)), logits(src.model, ids))
    for text in TEXTS:
        assert tok.encode(text).ids == src.tokenizer.encode(text).ids, text
    assert meta["chat_template"] == CHATML_TEMPLATE and meta["pre_tokenizer"] == "gpt-2"
    assert (meta["bos_token_id"], meta["eos_token_id"], meta["pad_token_id"]) == (0, 2, 3)
    assert meta["add_bos_token"] is False

    r = gguf.GGUFReader(tmp_path / "m.gguf")
    field = {k: r.get_field(k).contents() for k in (
        "general.architecture", "general.license", "llama.context_length", "llama.attention.head_count_kv",
        "llama.rope.dimension_count", "tokenizer.ggml.model", "tokenizer.ggml.eot_token_id")}
    assert field == {"general.architecture": "llama", "general.license": "CC0-1.0", "llama.context_length": 64,
                     "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 24,
                     "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.eot_token_id": 2}
    assert r.get_field("tokenizer.ggml.token_type").contents()[:5] == [3, 3, 3, 3, 1]  # specials are control


@pytest.mark.parametrize(("dtype", "types", "tol"), [
    ("f16", {"F16": 15, "F32": 5}, 1e-2),
    ("q8_0", {"F32": 5, "Q8_0": 15}, None),  # bounded per weight above; a random net amplifies it
])
def test_half_and_8bit_round_trip(make_model_dir, tmp_path: Path, dtype: str, types: dict, tol: float | None) -> None:
    """GQA, tied embeddings and 16 padding rows; width 64, so every matrix holds whole Q8_0 blocks."""
    src = load_source(make_model_dir("m", extra_rows=16))
    info = export_gguf(src, tmp_path / "m.gguf", dtype=dtype)
    assert info["tensor_types"] == types
    back, tok, _ = import_gguf(tmp_path / "m.gguf")
    assert back.config.tie_embeddings and back.config.n_kv_head == 2 and back.config.vocab_size == 416
    assert tok.get_vocab_size() == 416 and tok.id_to_token(415) == "[PAD415]"
    for name, w in src.model.state_dict().items():
        w2 = back.state_dict()[name]
        if w.dim() == 1:
            assert torch.equal(w, w2), name  # norms stay f32
        elif dtype == "f16":
            assert torch.equal(w.half().float(), w2), name
        else:  # per 32 weights an f16 scale d and int8 values: error <= d/2 + 127 |d - f16(d)| < 0.57 d
            step = w.reshape(-1, 32).abs().amax(-1, keepdim=True) / 127
            assert ((w - w2).reshape(-1, 32).abs() <= step * 0.57).all(), name
    if tol is not None:
        ids = src.tokenizer.encode(TEXTS[0] + TEXTS[1]).ids
        rel = (logits(back, ids) - logits(src.model, ids)).abs().max() / logits(src.model, ids).abs().max()
        assert rel < tol, f"{dtype}: max logit diff {rel:.2e} of the largest logit"


def test_q8_0_keeps_rows_it_cannot_block_in_f16(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = load_source(tiny_model_dir, allow_softcap_drop=True)  # width 48: rows of 48 are not whole blocks
    info = export_gguf(src, tmp_path / "m.gguf", dtype="q8_0")
    assert info["tensor_types"] == {"F16": 14, "F32": 5, "Q8_0": 2}  # only w_down's rows (128) are whole blocks


def test_refuses_tokenizers_llama_cpp_would_split_differently(tiny_copy, tmp_path: Path) -> None:
    from tokenizers import pre_tokenizers

    from gristmill.tokenizer.bpe import load_tokenizer, save_tokenizer

    d = tiny_copy("punct")
    tok = load_tokenizer(d)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel()])
    save_tokenizer(tok, d / "tokenizer.json")
    src = load_source(d, allow_softcap_drop=True)
    with pytest.raises(InputError, match="pre-tokenizer llama.cpp has no name for"):
        export_gguf(src, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
    with pytest.raises(ValueError, match="dtype must be one of f32, f16, q8_0"):
        export_gguf(src, tmp_path / "m.gguf", dtype="q4_k")


# --- llama.cpp itself -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed "
                                                   "(pip install -c constraints.txt llama-cpp-python)")


def llama_greedy(llm, ids: list[int], n: int, stop: tuple[int, ...]) -> list[int]:
    out: list[int] = []
    for t in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        out.append(t)
        if t in stop or len(out) == n:
            return out
    return out


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("which", ["trained", "gqa"])
def test_llama_cpp_decodes_like_gristmill(llama_cpp, tiny_model_dir: Path, make_model_dir, tmp_path: Path,
                                          which: str, dtype: str) -> None:
    """llama.cpp's greedy tokens equal Gristmill's on the very weights in the file (the re-imported model:
    for f32 the original); llama.cpp's tokenizer gives Gristmill's ids; its logits agree closely."""
    from gristmill.model.convert.parity import llama_cpp_logits

    d = tiny_model_dir if which == "trained" else make_model_dir("gqa", extra_rows=16)
    src = load_source(d, chat=True, allow_softcap_drop=True)
    export_gguf(src, tmp_path / "m.gguf", dtype=dtype)
    back, _, _ = import_gguf(tmp_path / "m.gguf")  # the weights as stored (rounded/quantised)

    # token by token for Q8_0: llama.cpp's AMX kernels for quantised batches crash where AMX is not granted
    # (see parity.llama_cpp_logits); vector kernels compute the same
    batch = 1 if dtype == "q8_0" else 64
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=64, n_batch=batch, n_ubatch=batch, verbose=False)
    try:
        assert llm.metadata["tokenizer.chat_template"] == CHATML_TEMPLATE
        for text in TEXTS:
            ids = src.tokenizer.encode(text).ids
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
            assert llm.detokenize(ids, special=True).decode() == text
        prompt = src.tokenizer.encode(render_chat(PROMPT, add_generation_prompt=True)).ids
        theirs = llama_greedy(llm, prompt, 24, src.stop_ids)
    finally:
        llm.close()
    assert theirs == greedy(back, prompt), "llama.cpp and Gristmill (same weights) decode differently"
    if dtype == "f32":
        assert theirs == greedy(src.model, prompt)

    ids = src.tokenizer.encode(render_chat(PROMPT, True) + TEXTS[0]).ids
    ref = capped(src, logits(back, ids))
    theirs_logits = llama_cpp_logits(tmp_path / "m.gguf", ids, one_at_a_time=dtype == "q8_0")
    diff = (capped(src, theirs_logits) - ref).abs().max().item()
    # llama.cpp sums in another order and, for Q8_0 weights, rounds the activations to 8 bits too; the
    # random model (init std 0.3) amplifies such differences tenfold
    assert diff < {"f32": 0.01, "f16": 0.01, "q8_0": 0.15}[dtype] * ref.abs().max().item(), f"{diff:.2e}"
    print(f"{which} {dtype}: llama.cpp max abs logit diff {diff:.2e} (largest logit {ref.abs().max():.1f}), "
          f"greedy {len(theirs)} tokens equal")
