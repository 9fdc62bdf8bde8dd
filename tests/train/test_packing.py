"""Sequence packing: conversations packed end to end into rows, kept apart by the model's ``segments``
(positions restart, no attention across), with the loss only on assistant tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gristmill.errors import InputError
from gristmill.formats.chat import encode_chat
from gristmill.formats.vocab import IGNORE_INDEX, IM_END_ID, IM_START_ID, PAD_ID
from gristmill.model.config import ModelConfig
from gristmill.model.gpt import GPT, segment_layout
from gristmill.tokenizer.bpe import load_tokenizer
from gristmill.train.batches import PackedChatBatches
from gristmill.train.sft import ChatExamples, encode_examples, pack_examples

QUESTIONS = ["Who is the king?", "What hath the queen said?", "Where is my lord tonight?", "Why speak of war?",
             "Is the night sweet?", "Shall we go?", "What is death?", "Who wears the crown?"]
ANSWERS = ["The king is dead, my lord.", "She said the night is fair and foul.", "He is gone to war.",
           "Because the peace is broken, sir.", "Sweet as love.", "Aye.", "A sleep.", "The noble heart."]


def records(n: int = 8) -> list[dict]:
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": QUESTIONS[i % 8]}, {"role": "assistant", "content": ANSWERS[i % 8]}]
        if i % 3 == 0:  # some conversations have a system prompt and a second turn
            msgs = [{"role": "system", "content": "Speak as a player."}, *msgs,
                    {"role": "user", "content": "Say more."}, {"role": "assistant", "content": ANSWERS[(i + 1) % 8]}]
        out.append({"messages": msgs})
    return out


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path):
    return load_tokenizer(tiny_model_dir)


def tiny(vocab: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=vocab, block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()


def test_packing_keeps_every_token_and_labels_only_assistant_replies(tok):
    recs = records()
    ex = encode_examples(tok, recs, 128)
    assert max(len(i) for i in ex.ids) <= 101
    packed = pack_examples(ex, 100)
    assert packed.examples == len(ex) and packed.truncated == packed.dropped == 0
    assert packed.x.shape == packed.y.shape == packed.segments.shape == (len(packed), 100)
    assert packed.tokens == sum(len(i) - 1 for i in ex.ids) and 0.5 < packed.fill <= 1
    assert len(packed) < len(ex)  # several conversations share a row
    # cut each row back into its conversations: each is exactly one example's (ids[:-1], labels[1:])
    found = []
    for r in range(len(packed)):
        seg = packed.segments[r]
        for s in np.unique(seg):
            at = seg == s
            assert np.all(np.diff(np.flatnonzero(at)) == 1)  # a segment is contiguous
            found.append((packed.x[r, at].tolist(), packed.y[r, at].tolist()))
    pads = [(x, y) for x, y in found if set(x) == {PAD_ID}]
    assert all(set(y) == {IGNORE_INDEX} for _, y in pads)  # padding carries no loss
    real = sorted(f for f in found if f not in pads)
    assert real == sorted((i[:-1].tolist(), lab[1:].tolist()) for i, lab in zip(ex.ids, ex.labels, strict=True))
    # the targets are exactly the assistant replies and their closing <|im_end|>, nothing else
    for rec in recs:
        ids, _ = encode_chat(tok, rec["messages"])
        y = next(y for x, y in real if x == ids[:-1])
        targets = [t for t in y if t != IGNORE_INDEX]
        replies = [m["content"] for m in rec["messages"] if m["role"] == "assistant"]
        want = []
        for reply in replies:
            want += tok.encode(reply, add_special_tokens=False).ids + [IM_END_ID]
        assert targets == want
        assert IM_START_ID not in targets


def test_long_conversations_are_cut_and_counted(tok):
    ex = encode_examples(tok, records(), 128)
    longest = max(len(i) for i in ex.ids)
    packed = pack_examples(ex, 24)
    assert packed.truncated == sum(len(i) > 25 for i in ex.ids) > 0
    assert packed.examples + packed.dropped == len(ex)
    assert longest > 25 and packed.x.shape[1] == 24
    # a conversation whose only assistant tokens fall past the cut is dropped, not packed with no targets
    only_late = ChatExamples([np.arange(10, 40)], [np.r_[np.full(29, IGNORE_INDEX), 39]])
    assert pack_examples(only_late, 8).dropped == 1 and len(pack_examples(only_late, 8)) == 0


def test_segment_layout_restarts_positions_and_blocks_cross_attention():
    pos, mask = segment_layout(torch.tensor([[0, 0, 0, 1, 1, 0, 0]]))  # ids may repeat once apart
    assert pos.tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    m = mask[0, 0]
    assert m[4].tolist() == [False, False, False, True, True, False, False]
    assert m[6].tolist() == [False] * 5 + [True, True]  # the second run of id 0 is a new segment
    assert torch.equal(m, m.tril())


def test_packed_row_scores_each_sample_as_if_alone(tok):
    ex = encode_examples(tok, records(), 128)
    packed = pack_examples(ex, 96)
    model = tiny(tok.get_vocab_size())
    x, y, seg = (torch.from_numpy(a) for a in (packed.x, packed.y, packed.segments))
    logits = model(x, segments=seg)[0]  # [R,T,V]
    checked = 0
    for r in range(len(packed)):
        for s in seg[r].unique():
            at = seg[r] == s
            if (y[r, at] == IGNORE_INDEX).all():
                continue  # padding
            alone = model(x[r, at][None])[0][0]  # the sample on its own, positions from 0
            torch.testing.assert_close(logits[r, at], alone, atol=1e-5, rtol=0)
            # and the fused loss path: the row with only this sample's targets = the sample alone
            only = torch.where(at, y[r], IGNORE_INDEX)[None]
            packed_loss = model(x[r][None], only, segments=seg[r][None])[1]
            torch.testing.assert_close(packed_loss, model(x[r, at][None], y[r, at][None])[1], atol=1e-5, rtol=0)
            torch.testing.assert_close(packed_loss, F.cross_entropy(alone, y[r, at]), atol=1e-5, rtol=0)
            checked += 1
    assert checked == packed.examples


def test_no_attention_crosses_samples(tok):
    ex = encode_examples(tok, records(3), 128)
    row = torch.from_numpy(np.concatenate([i[:-1] for i in ex.ids]))[None]  # three samples in one row
    lens = [len(i) - 1 for i in ex.ids]
    seg = torch.repeat_interleave(torch.arange(3), torch.tensor(lens))[None]
    model = tiny(tok.get_vocab_size())
    base = model(row, segments=seg)[0]
    poked = row.clone()
    poked[0, lens[0]:lens[0] + lens[1]] = (poked[0, lens[0]:lens[0] + lens[1]] + 7) % tok.get_vocab_size()
    after = model(poked, segments=seg)[0]
    before, poked_out = base.split(lens, dim=1), after.split(lens, dim=1)
    assert torch.equal(before[0], poked_out[0]) and torch.equal(before[2], poked_out[2])  # neighbours untouched
    assert not torch.allclose(before[1], poked_out[1])  # the poked sample did change
    # without segments the last sample does see the poked one (the test would notice a no-op mask)
    assert not torch.allclose(model(row)[0].split(lens, dim=1)[2], model(poked)[0].split(lens, dim=1)[2])


def test_one_segment_is_the_plain_causal_model_and_a_cache_is_refused():
    model = tiny(50)
    x = torch.randint(0, 50, (2, 20))
    torch.testing.assert_close(model(x, segments=torch.zeros_like(x))[0], model(x)[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="KV cache"):
        model(x, segments=torch.zeros_like(x), cache=model.new_cache(2))
    with pytest.raises(ValueError, match="one segment id per token"):
        model(x, segments=torch.zeros(2, 5, dtype=torch.long))


def test_packed_batches_are_reproducible_by_step_and_shared_across_ranks(tok):
    packed = pack_examples(encode_examples(tok, records(8), 128), 48)
    src = PackedChatBatches(packed, batch_size=2, seed=3)
    first = [src.next_batch() for _ in range(5)]  # more steps than one epoch of rows
    assert all(len(b) == 3 and b[0].shape == b[1].shape == b[2].shape == (2, 48) for b in first)
    again = PackedChatBatches(packed, batch_size=2, seed=3)
    again.load_state_dict({"step": 3})
    assert all(torch.equal(a, b) for a, b in zip(again.next_batch(), first[3], strict=True))
    halves = [PackedChatBatches(packed, batch_size=2, seed=3, rank=r, world=2).next_batch() for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), first[0][0])
    with pytest.raises(InputError, match="not divisible"):
        PackedChatBatches(packed, batch_size=3, seed=3, world=2)
    empty = pack_examples(ChatExamples([], []), 48)
    with pytest.raises(InputError, match="no chat examples"):
        PackedChatBatches(empty, batch_size=2, seed=3)


def test_a_training_step_on_packed_rows_learns(tok):
    """The (x, y, segments) batches train: the loss on the packed rows goes down."""
    packed = pack_examples(encode_examples(tok, records(8), 128), 64)
    model = tiny(tok.get_vocab_size()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    src = PackedChatBatches(packed, batch_size=len(packed), seed=0)
    losses = []
    for _ in range(6):
        x, y, seg = src.next_batch()
        loss = model(x, y, segments=seg)[1]
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
