"""The model: shapes, -100 masking, KV-cache parity with a full forward, options, model directory I/O."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from gristmill.errors import InputError
from gristmill.model.config import ModelConfig
from gristmill.model.gpt import GPT
from gristmill.model.head_loss import head_loss
from gristmill.model.io import load_model, save_model


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)
    base.update(kw)
    return ModelConfig(**base)


def test_forward_shapes_and_loss_matches_cross_entropy():
    torch.manual_seed(0)
    m = GPT(tiny())
    idx = torch.randint(0, 97, (3, 16))
    tgt = torch.randint(0, 97, (3, 16))
    logits, none = m(idx)
    assert logits.shape == (3, 16, 97) and none is None
    no_logits, loss = m(idx, tgt)
    assert no_logits is None  # the loss path never materialises [B,T,V]
    ref = F.cross_entropy(logits.view(-1, 97), tgt.view(-1))
    assert torch.allclose(loss, ref, atol=1e-6)
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.5  # near-uniform at init


def test_ignore_index_masks_targets():
    torch.manual_seed(0)
    m = GPT(tiny())
    idx = torch.randint(0, 97, (2, 10))
    tgt = torch.randint(0, 97, (2, 10))
    masked = tgt.clone()
    masked[:, :6] = -100
    logits = m(idx)[0]
    loss = m(idx, masked)[1]
    ref = F.cross_entropy(logits[:, 6:].reshape(-1, 97), tgt[:, 6:].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-6)
    # what sits under a -100 does not matter, and an all-masked row contributes nothing
    other = masked.clone()
    other[1] = -100
    assert torch.allclose(m(idx, other)[1], F.cross_entropy(logits[0, 6:], tgt[0, 6:]), atol=1e-6)
    assert m(idx, torch.full_like(tgt, -100))[1].item() == 0.0  # nothing to score: zero, not NaN


@pytest.mark.parametrize("cap", [None, 30.0, 3.0])
@pytest.mark.parametrize("tie", [False, True])
def test_fused_head_loss_gradients_match_autograd_through_logits(cap, tie):
    """The chunked head+soft-cap+cross-entropy gives the same loss and gradients as autograd through
    materialised logits, for every chunking (including chunks that split the batch unevenly)."""
    torch.manual_seed(0)
    x = torch.randn(45, 16, requires_grad=True)
    w = torch.randn(23, 16, requires_grad=True)
    t = torch.randint(0, 23, (45,))
    t[::4] = -100
    z = x @ w.t()
    if cap:
        z = cap * torch.tanh(z / cap)
    (F.cross_entropy(z, t) * 3).backward()
    ref_gx, ref_gw = x.grad.clone(), w.grad.clone()
    for chunk_bytes in (1 << 20, 4 * 23 * 7, 4 * 23):  # one chunk, 7 rows, 1 row
        x.grad = w.grad = None
        (head_loss(x, w, t, cap, chunk_bytes) * 3).backward()
        assert torch.allclose(x.grad, ref_gx, atol=1e-6) and torch.allclose(w.grad, ref_gw, atol=1e-6)
    # in the model, tied or not, parameter gradients match a plain logits -> cross_entropy backward
    m = GPT(tiny(tie_embeddings=tie, logit_softcap=cap))
    idx, tgt = torch.randint(0, 97, (2, 12)), torch.randint(0, 97, (2, 12))
    m(idx, tgt)[1].backward()
    fused = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    F.cross_entropy(m(idx)[0].view(-1, 97), tgt.view(-1)).backward()
    for n, p in m.named_parameters():
        assert torch.allclose(fused[n], p.grad, atol=1e-6), n


@pytest.mark.parametrize("opts", [
    {},
    {"n_kv_head": 2, "qk_norm": True, "logit_softcap": 15.0},
    {"n_kv_head": 1, "tie_embeddings": False},
])
def test_kv_cache_matches_full_forward(opts):
    torch.manual_seed(0)
    m = GPT(tiny(**opts)).eval()
    idx = torch.randint(0, 97, (2, 20))
    full, _ = m(idx)
    cache = m.new_cache(2, 24)
    # a prefill of 7 tokens, a chunk of 5 (multi-token step after a prefix), then one at a time
    parts = [m(idx[:, :7], cache=cache)[0], m(idx[:, 7:12], cache=cache)[0]]
    parts += [m(idx[:, t:t + 1], cache=cache)[0] for t in range(12, 20)]
    inc = torch.cat(parts, dim=1)
    assert cache.pos == 20
    assert torch.allclose(inc, full, atol=1e-5), (inc - full).abs().max()


def test_cache_overflow_is_an_error():
    m = GPT(tiny()).eval()
    cache = m.new_cache(1, 4)
    with pytest.raises(ValueError, match="full"):
        m(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_dropout_is_active_in_train_mode_only():
    torch.manual_seed(0)
    m = GPT(tiny(dropout=0.3, attn_dropout=0.3, embd_dropout=0.3))
    idx = torch.randint(0, 97, (2, 8))
    m.train()
    assert not torch.equal(m(idx)[0], m(idx)[0])
    m.eval()
    assert torch.equal(m(idx)[0], m(idx)[0])


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        tiny(n_head=3)
    with pytest.raises(ValueError, match="n_kv_head"):
        tiny(n_kv_head=3)
    with pytest.raises(ValueError):
        tiny(bogus=1)


def test_untied_has_separate_head_and_tied_does_not():
    assert GPT(tiny(tie_embeddings=True)).lm_head is None
    m = GPT(tiny(tie_embeddings=False))
    assert m.lm_head.weight.data_ptr() != m.tok_emb.weight.data_ptr()


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    tok = tmp_path / "tok.json"
    tok.write_text('{"fake": "tokenizer"}')
    m = GPT(tiny(qk_norm=True, tie_embeddings=False))
    save_model(tmp_path / "model", m, tok)
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json"]
    assert json.loads((tmp_path / "model" / "config.json").read_text())["qk_norm"] is True
    m2 = load_model(tmp_path / "model")
    idx = torch.randint(0, 97, (1, 9))
    assert torch.equal(m.eval()(idx)[0], m2(idx)[0])
    assert not m2.training


def test_load_model_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="missing"):
        load_model(tmp_path / "nope")
    save_model(tmp_path / "m", GPT(tiny()), None)
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(InputError, match="corrupt"):
        load_model(tmp_path / "m")
    save_model(tmp_path / "m", GPT(tiny()), None)
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config"):
        load_model(tmp_path / "m")
