"""LoRA: swap-in adapters on a tiny random GPT (exact start, only adapters train, merge, adapter files,
misuse errors, the config's checks) and parity with peft on a tiny transformers Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError

from gristmill.errors import InputError
from gristmill.model.config import ModelConfig
from gristmill.model.gpt import GPT
from gristmill.model.io import load_model, save_model
from gristmill.model.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoRALinear,
    apply_lora,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_lora,
    save_adapter,
)
from gristmill.train.config import LORA_TARGETS, LoraConfig, OptimConfig
from gristmill.train.optim import build_optimizer

V = 97


def tiny(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, logit_softcap=30.0)
    return GPT(ModelConfig(**{**cfg, **kw}))


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (3, 16), generator=g), torch.randint(0, V, (3, 16), generator=g)


def train_steps(model: GPT, n: int = 3, lr: float = 1e-2) -> None:
    """A few AdamW steps through the real optimiser builder (which takes what requires grad)."""
    opt = build_optimizer(model, OptimConfig(lr=lr, weight_decay=0.1))
    model.train()
    for s in range(n):
        x, y = batch(s)
        model(x, y)[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_lora_starts_exactly_at_the_base_model():
    base = tiny()
    x, y = batch()
    want_logits, want_loss = base(x)[0], base(x, y)[1]
    names = apply_lora(base, LoraConfig(rank=4, alpha=8))
    assert names == [f"blocks.{i}.{part}.{n}" for i in range(2) for part, ns in
                     (("attn", ("wq", "wk", "wv", "wo")), ("mlp", ("w_gate", "w_up", "w_down"))) for n in ns]
    assert torch.equal(base(x)[0], want_logits)  # B = 0: the update is exactly zero
    assert torch.equal(base(x, y)[1], want_loss)
    layer = base.blocks[0].attn.wq
    assert isinstance(layer, LoRALinear) and layer.lora_a.shape == (4, 32) and layer.lora_b.shape == (32, 4)
    assert layer.lora_a.abs().sum() > 0 and layer.lora_b.abs().sum() == 0


def test_only_the_adapters_train_and_the_optimizer_sees_only_them():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoraConfig(rank=4, alpha=8, target_modules=["wq", "wv", "w_down"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.{m}.{ab}" for i in range(2) for m in ("attn.wq", "attn.wv", "mlp.w_down")
                         for ab in ("lora_a", "lora_b")}
    opt = build_optimizer(model, OptimConfig())
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    adapters = {k: v.clone() for k, v in lora_state_dict(model).items()}
    train_steps(model)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # every base tensor untouched
    assert all(not torch.equal(after[k], v) for k, v in adapters.items())  # every A and B moved


def test_merge_gives_the_same_logits_and_exactly_the_original_keys(tmp_path: Path):
    model = tiny()
    keys = list(model.state_dict())
    apply_lora(model, LoraConfig(rank=4, alpha=16, dropout=0.1))
    train_steps(model)
    model.eval()
    x, y = batch(9)
    want_logits, want_loss = model(x)[0], model(x, y)[1]
    assert sorted(merge_lora(model)) == sorted(f"blocks.{i}.{m}" for i in range(2) for m in
                                               ("attn.wq", "attn.wk", "attn.wv", "attn.wo",
                                                "mlp.w_gate", "mlp.w_up", "mlp.w_down"))
    assert list(model.state_dict()) == keys
    assert not lora_layers(model) and type(model.blocks[1].mlp.w_up) is nn.Linear
    assert all(p.requires_grad for p in model.parameters())  # an ordinary model again
    torch.testing.assert_close(model(x)[0], want_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(model(x, y)[1], want_loss, atol=1e-5, rtol=0)
    save_model(tmp_path / "merged", model, None)  # an ordinary model directory
    (tmp_path / "merged" / "tokenizer.json").write_text("{}")
    torch.testing.assert_close(load_model(tmp_path / "merged")(x)[0], want_logits, atol=1e-5, rtol=0)


def test_adapter_save_load_round_trip(tmp_path: Path):
    cfg = LoraConfig(rank=2, alpha=4, target_modules=["wk", "w_gate"])
    model = tiny()
    apply_lora(model, cfg)
    train_steps(model)
    save_adapter(tmp_path / "adapter", model, cfg)
    assert json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())["target_modules"] == ["wk", "w_gate"]
    model.eval()
    x, _ = batch(5)
    fresh = tiny().eval()  # the same base weights (same seed), no LoRA yet
    names = load_adapter(fresh, tmp_path / "adapter")
    assert names == ["blocks.0.attn.wk", "blocks.0.mlp.w_gate", "blocks.1.attn.wk", "blocks.1.mlp.w_gate"]
    assert torch.equal(fresh(x)[0], model(x)[0])
    # another base model is refused with a sentence, not a traceback: by its config, else by the shapes
    with pytest.raises(InputError, match=r"trained on another base model \(config differs in \['n_embd'\]\)"):
        load_adapter(tiny(n_embd=48), tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    (tmp_path / "adapter" / ADAPTER_CONFIG).write_text(json.dumps({**meta, "base_model_config": None}))
    other = tiny(n_embd=48)
    with pytest.raises(InputError, match="has shape"):
        load_adapter(other, tmp_path / "adapter")
    assert not lora_layers(other)  # refused before anything changed
    (tmp_path / "adapter" / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(InputError, match="adapter.safetensors is missing"):
        load_adapter(tiny(), tmp_path / "adapter")
    with pytest.raises(InputError, match="adapter_config.json is missing"):
        load_adapter(tiny(), tmp_path / "nowhere")


def test_misuse_is_a_clear_error():
    model = tiny()
    apply_lora(model, LoraConfig(rank=2))
    with pytest.raises(ValueError, match="already applied"):
        apply_lora(model, LoraConfig(rank=2))
    with pytest.raises(ValueError, match=r"\['proj'\] match no linear layer"):
        apply_lora(tiny(), type("Spec", (), {"rank": 2, "alpha": 4.0, "dropout": 0.0,
                                             "target_modules": ["wq", "proj"]})())
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(Path("unused"), tiny(), LoraConfig())
    with pytest.raises(ValueError, match="rank"):
        save_adapter(Path("unused"), model, LoraConfig(rank=3))


def test_lora_config_checks_every_field():
    assert LoraConfig().target_modules == list(LORA_TARGETS)
    for bad in ({"rank": 0}, {"alpha": 0}, {"dropout": 1.0}, {"target_modules": []},
                {"target_modules": ["wq", "q_proj"]}, {"target_modules": ["wq", "wq"]}, {"ranks": 4}):
        with pytest.raises(ValidationError):
            LoraConfig(**bad)
    for name, field in LoraConfig.model_fields.items():
        assert field.description, f"LoraConfig.{name} has no docstring"


def test_dropout_only_touches_the_adapter_path_and_only_in_training():
    model = tiny()
    apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.5))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_b.normal_()
    x, _ = batch()
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])


def test_activation_checkpointing_gives_the_same_loss_and_adapter_gradients():
    """Recomputing each block in backward (the memory option) changes nothing but memory and time."""
    grads = []
    for recompute in (0, 1, 2):  # none, the first block, both
        model = tiny(dropout=0.1)
        apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.1))
        with torch.no_grad():
            for layer in lora_layers(model).values():
                layer.lora_b.normal_(0, 0.1)
        model.train()
        model.checkpoint_blocks = recompute
        torch.manual_seed(5)  # the same dropout masks: checkpointing replays the RNG in its recompute
        x, y = batch()
        loss = model(x, y)[1]
        loss.backward()
        grads.append((loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]))
    for loss, grad in grads[1:]:
        torch.testing.assert_close(loss, grads[0][0], atol=1e-6, rtol=0)
        for a, b in zip(grad, grads[0][1], strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_lora_runs_under_bf16_autocast():
    """The training runtime autocasts to bf16 on GPUs; the in-place adapter add must follow the dtype."""
    model = tiny()
    apply_lora(model, LoraConfig(rank=4, alpha=8))
    x, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, y)[1]
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------------ peft


def _tiny_hf_llama(folder: Path) -> nn.Module:
    """A random transformers Llama (2 layers, GQA 4:2) saved with a tiny tokenizer, as import_hf reads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|pad|>": 3}
    vocab.update({chr(ord("a") + i): 4 + i for i in range(26)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save(str(folder / "tokenizer.json"))
    return model


def test_same_loss_and_adapter_gradients_as_peft(tmp_path: Path):
    """Same base weights, same A and B copied across: the loss and every A/B gradient agree with peft's."""
    peft = pytest.importorskip("peft")
    from gristmill.model.convert.hf import import_hf

    hf = _tiny_hf_llama(tmp_path / "hf")
    ours = import_hf(tmp_path / "hf")[0]
    rank, alpha = 4, 8.0
    apply_lora(ours, LoraConfig(rank=rank, alpha=alpha))
    theirs = peft.get_peft_model(hf, peft.LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    hf_name = {"attn.wq": "self_attn.q_proj", "attn.wk": "self_attn.k_proj", "attn.wv": "self_attn.v_proj",
               "attn.wo": "self_attn.o_proj", "mlp.w_gate": "mlp.gate_proj", "mlp.w_up": "mlp.up_proj",
               "mlp.w_down": "mlp.down_proj"}
    theirs_params = dict(theirs.named_parameters())
    pairs = []  # (our layer, their A, their B)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            _, i, part, proj = name.split(".")
            prefix = f"base_model.model.model.layers.{i}.{hf_name[f'{part}.{proj}']}"
            a, b = theirs_params[f"{prefix}.lora_A.default.weight"], theirs_params[f"{prefix}.lora_B.default.weight"]
            layer.lora_b.normal_(0, 0.05)  # B != 0, so the adapters change the output and A gets gradient
            a.copy_(layer.lora_a)
            b.copy_(layer.lora_b)
            pairs.append((layer, a, b))
    x, y = batch(3)
    y[:, :4] = -100  # a masked prompt, as in fine-tuning
    ours.train()
    theirs.train()
    loss = ours(x, y)[1]
    ref = theirs(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    loss.backward()
    ref.backward()
    for layer, a, b in pairs:
        assert a.grad.abs().max() > 1e-4 and b.grad.abs().max() > 1e-4  # a real comparison, not 0 == 0
        torch.testing.assert_close(layer.lora_a.grad, a.grad, atol=1e-5, rtol=0)
        torch.testing.assert_close(layer.lora_b.grad, b.grad, atol=1e-5, rtol=0)
