"""Importing a transformers Llama folder: a tiny random Llama written by transformers itself must give
the same logits in Gristmill's model, survive ``save_imported`` -> ``load_for_inference``, and bad
folders must get one-sentence InputErrors. Also the shared key table, both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gristmill.errors import InputError
from gristmill.formats.vocab import SPECIAL_TOKENS
from gristmill.model.config import ModelConfig
from gristmill.model.convert.hf import import_hf
from gristmill.model.convert.imported import IMPORT_FILE, save_imported
from gristmill.model.convert.keys import (
    NAMINGS,
    rename,
    rotary_rows_from_gguf,
    rotary_rows_to_gguf,
)
from gristmill.model.gpt import GPT

TEXT = ["The mill grinds grist into flour, 12 sacks a day.", "Wind turns the sails; water turns the wheel.",
        "A miller keeps 3 stones sharp and the hopper full."]
CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def tiny_tokenizer() -> Tokenizer:
    """A byte-level BPE with Gristmill's special tokens at ids 0-3, trained on three sentences."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer)
    return tok


def tiny_llama(folder: Path, *, tie: bool, **overrides) -> torch.nn.Module:
    """A random transformers Llama (2 layers, GQA 4:2 heads of dim 16) saved to ``folder`` with its
    tokenizer and a chat template, as ``save_pretrained`` writes it; returns the model (eval)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, rope_theta=5000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=3, **overrides)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms start at 1; make them differ so a swapped norm cannot pass
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_import_hf_matches_transformers(tmp_path: Path, tie: bool) -> None:
    pytest.importorskip("transformers")
    ref = tiny_llama(tmp_path, tie=tie)
    model, tok, info = import_hf(tmp_path)

    assert model.config.tie_embeddings is tie and model.config.logit_softcap is None
    assert model.config.n_kv_head == 2 and model.config.rope_theta == 5000.0
    a, b = tok.encode(TEXT[0]).ids, tok.encode(TEXT[1]).ids
    idx = torch.tensor([a[:len(b)], b[:len(a)]])  # [2, T]
    with torch.no_grad():
        ours, theirs = model(idx)[0], ref(idx).logits
    diff = (ours - theirs).abs().max().item()
    assert diff < 1e-4, f"max abs logit diff vs transformers {diff:.2e}"
    assert info["chat_template"] == CHATML
    assert (info["bos_token_id"], info["eos_token_id"], info["pad_token_id"]) == (1, 2, 3)
    assert info["source_dtype"] == ["float32"] and set(info["sha256"]) == {"model.safetensors"}


def test_save_imported_loads_with_model_io(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from gristmill.model.io import load_for_inference, load_model

    tiny_llama(tmp_path / "hf", tie=True)
    model, tok, info = import_hf(tmp_path / "hf")
    save_imported(tmp_path / "model", model, tok, info)

    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(
        [IMPORT_FILE, "config.json", "model.safetensors", "tokenizer.json"])
    assert json.loads((tmp_path / "model" / IMPORT_FILE).read_text())["chat_template"] == CHATML
    loaded, loaded_tok = load_for_inference(tmp_path / "model")
    idx = torch.tensor([tok.encode(TEXT[2]).ids])
    assert loaded_tok.encode(TEXT[2]).ids == idx[0].tolist()
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])
        assert torch.equal(load_model(tmp_path / "model")(idx)[0], loaded(idx)[0])


def test_import_hf_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="config.json does not exist"):
        import_hf(tmp_path)
    cfg = {"model_type": "gpt2", "hidden_size": 64}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="'gpt2' model; only model_type llama"):
        import_hf(tmp_path)


def test_import_hf_refuses_unsupported_llama_options(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    tiny_llama(tmp_path, tie=False, attention_bias=True)
    with pytest.raises(InputError, match="attention_bias = true"):
        import_hf(tmp_path)

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(attention_bias=False, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="rope scaling 'linear'"):
        import_hf(tmp_path)

    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=r"has a weight model\.layers\.\d+\..*\.bias"):
        import_hf(tmp_path)


def test_every_gristmill_weight_has_a_name_in_each_format() -> None:
    for tie in (False, True):
        gpt = GPT(ModelConfig(vocab_size=16, block_size=8, n_layer=2, n_head=2, n_embd=8, tie_embeddings=tie))
        for name in gpt.state_dict():
            for fmt in NAMINGS:
                other = rename(name, "gristmill", fmt)
                assert other is not None, (name, fmt)
                assert rename(other, fmt, "gristmill") == name
    assert rename("blk.12.ffn_down.weight", "gguf", "hf") == "model.layers.12.mlp.down_proj.weight"
    assert rename("blocks.0.attn.q_norm.weight", "gristmill", "gguf") is None


def test_rotary_row_order_round_trips_and_pairs_halves() -> None:
    heads, d = 3, 4  # rows per head: (a0 a1 | b0 b1) -> llama.cpp order (a0 b0 a1 b1)
    w = torch.arange(heads * d * 2, dtype=torch.float32).reshape(heads * d, 2)
    g = rotary_rows_to_gguf(w, heads)
    assert g[:4, 0].tolist() == [w[0, 0], w[2, 0], w[1, 0], w[3, 0]]
    assert torch.equal(rotary_rows_from_gguf(g, heads), w)
    assert (rotary_rows_from_gguf(g.numpy(), heads) == w.numpy()).all()
