"""The chat template (ChatML) shared by synth, finetune and serve.

A conversation is a list of ``{"role": "system"|"user"|"assistant", "content": str}`` messages, rendered
as ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message; a generation prompt is
``<|im_start|>assistant\\n`` and generation stops at ``<|im_end|>``.

:func:`encode_chat` builds the token ids piece by piece (special tokens by id, the text between them
encoded on its own) so the loss mask knows exactly which tokens are assistant content. For ordinary text
the ids equal ``tokenizer.encode(render_chat(messages))``; servers should still prefer
``encode_chat(tok, messages, add_generation_prompt=True)`` to tokenise prompts exactly as in training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gristmill.errors import InputError
from gristmill.formats.vocab import IGNORE_INDEX, IM_END_ID, IM_START_ID, SPECIAL_TOKENS

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ROLES = ("system", "user", "assistant")
SAMPLE_PROMPTS = ("Who was Hamlet?", "Tell me a fortune about computers.", "What is an encyclopedia for?")
"""The fixed chat prompts every model of a run answers, so the report can show the answers side by side."""
IM_START, IM_END = SPECIAL_TOKENS[IM_START_ID], SPECIAL_TOKENS[IM_END_ID]

Message = Mapping[str, Any]


class ChatFormatError(InputError):
    """A conversation does not follow the chat format (bad role, empty content, reserved token ...)."""


def validate_messages(messages: Sequence[Message], *, need_assistant: bool = False) -> None:
    """Check a conversation; raise :class:`ChatFormatError` with one sentence naming the message at fault.

    Rules: a non-empty list; every message has a known ``role`` and non-blank string ``content`` without
    special-token strings; ``system`` only first; the first other message is from the user. With
    ``need_assistant`` there must be an assistant reply to learn from.
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) or not messages:
        raise ChatFormatError("messages must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ChatFormatError(
                f"message {i} must be an object with 'role' and 'content', got {type(m).__name__}"
            )
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatFormatError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise ChatFormatError(f"message {i} ({role}) has empty or non-string content")
        for s in SPECIAL_TOKENS:
            if s in content:
                raise ChatFormatError(f"message {i} ({role}) contains the reserved token {s}; remove it")
        if role == "system" and i != 0:
            raise ChatFormatError(f"message {i} is a system message; only the first message may be one")
    first = 1 if messages[0]["role"] == "system" else 0
    if first >= len(messages) or messages[first]["role"] != "user":
        raise ChatFormatError(f"message {first} must be from the user (after an optional system message)")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise ChatFormatError("the conversation has no assistant message to learn from")


def render_chat(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The ChatML text of a conversation, optionally ending with the assistant generation prompt."""
    validate_messages(messages)
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def encode_chat(
    tokenizer: Tokenizer, messages: Sequence[Message], *, add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and per-token labels for supervised fine-tuning.

    ``labels[i]`` is ``ids[i]`` for the content tokens of assistant messages and their closing
    ``<|im_end|>`` (so the model learns to stop), and :data:`IGNORE_INDEX` everywhere else. Labels are
    aligned with ids, not shifted: the trainer predicts ``labels[1:]`` from ``ids[:-1]``.
    """
    validate_messages(messages, need_assistant=not add_generation_prompt)
    ids: list[int] = []
    labels: list[int] = []

    def add(toks: list[int], learn: bool) -> None:
        ids.extend(toks)
        labels.extend(toks if learn else [IGNORE_INDEX] * len(toks))

    newline = _encode(tokenizer, "\n")
    for m in messages:
        learn = m["role"] == "assistant"
        add([IM_START_ID] + _encode(tokenizer, m["role"] + "\n"), False)
        add(_encode(tokenizer, m["content"]) + [IM_END_ID], learn)
        add(newline, False)
    if add_generation_prompt:
        add([IM_START_ID] + _encode(tokenizer, "assistant\n"), False)
    return ids, labels


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids
