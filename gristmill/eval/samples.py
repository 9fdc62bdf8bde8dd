"""Answers to fixed chat prompts: every model of a run answers the same prompts greedily, so the report can
put the answers side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def chat_answers(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int) -> list[dict[str, Any]]:
    """``[{"prompt", "answer", "finish_reason", "tokens"}]``: greedy answers with the chat template."""
    from gristmill.formats.chat import encode_chat
    from gristmill.inference.sampling import SamplingParams
    from gristmill.inference.stream import generate

    out = []
    for prompt in prompts:
        ids, _ = encode_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
        r = generate(model, tokenizer, ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=0),
                     truncate=True)
        out.append({"prompt": prompt, "answer": r.text.strip(), "finish_reason": r.finish_reason,
                    "tokens": r.completion_tokens})
    return out
