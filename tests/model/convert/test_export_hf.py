"""Exporting to a transformers folder: transformers itself loads it (no remote code) and computes
Gristmill's logits; its tokenizer encodes, decodes and renders the chat template exactly as Gristmill
does; the importer reads it back to the same weights; what Llama cannot express is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gristmill.errors import InputError
from gristmill.formats.chat import render_chat
from gristmill.inference.sampling import SamplingParams
from gristmill.inference.stream import generate_ids
from gristmill.model.convert.export_hf import HF_FILES, export_hf
from gristmill.model.convert.exported import CHATML_TEMPLATE, load_source

transformers = pytest.importorskip("transformers")

CONVERSATIONS = [
    [{"role": "user", "content": "Who was Hamlet?"}],
    [{"role": "system", "content": "Answer in verse."}, {"role": "user", "content": "Why  wait?\n\tSay 42."},
     {"role": "assistant", "content": "To be, or not to be."}, {"role": "user", "content": "Naïve café 東京 🙂"}],
]
TEXTS = ["To be, or not to be: that is the question.", "  2024 — naïve café, 東京都 🙂\n\n\tend ",
         "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"]


def greedy_gristmill(model, ids: list[int], n: int) -> list[int]:
    return list(generate_ids(model, ids, SamplingParams(max_new_tokens=n, temperature=0)))


def test_transformers_loads_the_export_and_matches_gristmill(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The tiny trained model soft-caps its logits at 30: the exported logits are the uncapped ones, so
    capping them must give Gristmill's logits to float rounding, and greedy decoding must agree."""
    src = load_source(tiny_model_dir, chat=True, allow_softcap_drop=True)
    sizes = export_hf(src, tmp_path / "hf")
    assert set(sizes) == set(HF_FILES) and all(n > 0 for n in sizes.values())

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    cfg = src.config
    assert model.config.max_position_embeddings == cfg.block_size and model.config.tie_word_embeddings is False
    assert model.config.num_key_value_heads == cfg.kv_heads and model.config.rope_parameters["rope_theta"] == cfg.rope_theta
    assert model.config.rms_norm_eps == cfg.norm_eps
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|endoftext|>", "<|im_end|>", "<|pad|>")
    assert model.generation_config.eos_token_id == [2, 0] and model.generation_config.pad_token_id == 3

    for messages in CONVERSATIONS:
        for gen in (False, True):
            assert tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False) == \
                render_chat(messages, add_generation_prompt=gen)
    for text in TEXTS + [render_chat(CONVERSATIONS[1], add_generation_prompt=True)]:
        ids = src.tokenizer.encode(text, add_special_tokens=False).ids
        assert tok(text)["input_ids"] == ids, text
        assert tok.decode(ids) == text

    prompt = src.tokenizer.encode(render_chat(CONVERSATIONS[0], add_generation_prompt=True)).ids
    x = torch.tensor([prompt + src.tokenizer.encode(TEXTS[0]).ids])
    with torch.no_grad():
        ours, theirs = src.model(x)[0][0], model(x).logits[0]
    cap = cfg.logit_softcap
    diff = (cap * torch.tanh(theirs / cap) - ours).abs().max().item()
    assert diff < 1e-5, f"max abs logit diff (soft-cap applied) {diff:.2e}"
    assert (theirs - ours).abs().max() > 1e-3, "the exported logits should be the uncapped ones"

    with torch.no_grad():
        hf_greedy = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):]
    ours_greedy = greedy_gristmill(src.model, prompt, 24)
    assert hf_greedy.tolist() == ours_greedy
    print(f"tiny model: max abs logit diff {diff:.2e} (soft-capped), uncapped "
          f"{(theirs - ours).abs().max():.3f}; greedy {len(ours_greedy)} tokens equal")


def test_gqa_tied_padded_model_round_trips(make_model_dir, tmp_path: Path) -> None:
    """GQA (4 query, 2 key/value heads), tied embeddings, 16 embedding rows past the last token, no
    soft-cap: transformers computes the same logits, and import_hf reads back the very same weights."""
    from gristmill.model.convert.hf import import_hf

    src = load_source(make_model_dir("gqa", extra_rows=16))
    export_hf(src, tmp_path / "hf")
    names = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert names["num_key_value_heads"] == 2 and names["tie_word_embeddings"] is True
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys() and "model.embed_tokens.weight" in f.keys()

    back, _, _ = import_hf(tmp_path / "hf")
    a, b = src.model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.tensor([src.tokenizer.encode(TEXTS[0] + TEXTS[1]).ids])
    with torch.no_grad():
        diff = (model(x).logits[0] - src.model(x)[0][0]).abs().max().item()
    assert diff < 1e-4, f"max abs logit diff {diff:.2e}"


def test_half_precision_weights(make_model_dir, tmp_path: Path) -> None:
    src = load_source(make_model_dir("bf16"))
    f32 = export_hf(src, tmp_path / "f32")["model.safetensors"]
    bf16 = export_hf(src, tmp_path / "bf16", dtype="bfloat16")["model.safetensors"]
    assert bf16 < 0.55 * f32
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of float32, float16, bfloat16"):
        export_hf(src, tmp_path / "x", dtype="int8")


def test_imported_model_keeps_its_template_and_ids(tiny_copy, tmp_path: Path) -> None:
    """A model with import.json exports the chat template and special ids it was imported with."""
    d = tiny_copy("imported")
    # SmolLM2's kind of template: ChatML with a default system message
    template = ("{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nBe kind.<|im_end|>\\n' }}"
                "{%- endif %}" + CHATML_TEMPLATE)
    (d / "import.json").write_text(json.dumps({"format": "gguf", "source": "x.gguf", "name": "X 1M",
                                               "chat_template": template, "bos_token_id": 1, "eos_token_id": 2,
                                               "pad_token_id": 2, "add_bos_token": False}))
    src = load_source(d, allow_softcap_drop=True)
    assert (src.name, src.bos_id, src.eos_id, src.pad_id, src.stop_ids) == ("X 1M", 1, 2, 2, (2, 0))
    export_hf(src, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    text = tok.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>system\nBe kind.<|im_end|>\n" + render_chat(CONVERSATIONS[0], True)


def test_refuses_what_llama_cannot_express(make_model_dir, tiny_model_dir: Path) -> None:
    with pytest.raises(InputError, match=r"qk_norm = true, which neither Llama .* train.model.qk_norm: false"):
        load_source(make_model_dir("qk", qk_norm=True), allow_softcap_drop=True)
    with pytest.raises(InputError, match=r"soft-caps logits at 30, .* export.allow_softcap_drop: true"):
        load_source(tiny_model_dir)
