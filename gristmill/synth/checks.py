"""Checks every draft must pass; each failure has a reason that goes to ``rejected.jsonl`` and the stats.

The privacy guard uses the one PII module, :mod:`gristmill.curate.pii`; rejected records are written with
the matches masked.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from gristmill.curate.pii import mask_pii, pii_kinds
from gristmill.formats.chat import ChatFormatError, validate_messages
from gristmill.synth.base import Draft
from gristmill.synth.config import SynthConfig


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def copied(answer: str, prompt: str) -> bool:
    """Whether the answer appears in the prompt as whole words ("Ant" is not copied from "Antony")."""
    return re.search(rf"(?<!\w){re.escape(_norm(answer))}(?!\w)", _norm(prompt)) is not None


def prompt_key(draft: Draft) -> str:
    """Identity of a prompt for duplicate detection: case and whitespace do not make a new prompt."""
    return hashlib.sha256(_norm(draft.prompt).encode()).hexdigest()


class DraftFilter:
    """Applies the checks in order and remembers prompts already accepted (within and across splits)."""

    def __init__(self, cfg: SynthConfig) -> None:
        self.cfg = cfg
        self.seen_prompts: set[str] = set()

    def reason(self, draft: Draft) -> str | None:
        """Why ``draft`` is rejected, or None to accept it (and remember its prompt)."""
        cfg = self.cfg
        prompt, answer = draft.prompt, draft.answer
        if not answer.strip():
            return "empty_answer"
        try:
            validate_messages(draft.messages, need_assistant=True)
        except ChatFormatError:
            return "bad_format"  # e.g. an empty prompt or a special-token string inside the text
        if len(prompt) < cfg.min_prompt_chars:
            return "prompt_too_short"
        if len(prompt) > cfg.max_prompt_chars:
            return "prompt_too_long"
        if len(answer) < cfg.min_answer_chars:
            return "answer_too_short"
        if len(answer) > cfg.max_answer_chars:
            return "answer_too_long"
        if copied(answer, prompt):
            return "answer_in_prompt"
        if cfg.pii_filter and pii_kinds(prompt + "\n" + answer):
            return "pii"
        key = prompt_key(draft)
        if key in self.seen_prompts:
            return "duplicate_prompt"
        self.seen_prompts.add(key)
        return None

    def masked(self, messages: Iterable[dict[str, str]]) -> list[dict[str, str]]:
        """Messages safe to write into ``rejected.jsonl`` (personal data masked when the guard is on)."""
        if not self.cfg.pii_filter:
            return list(messages)
        return [{**m, "content": mask_pii(m["content"])} for m in messages]
