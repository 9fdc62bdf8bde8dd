"""Checks every draft must pass; each failure has a reason that goes to ``rejected.jsonl`` and the stats.

The privacy guard is a simple pattern check for e-mail addresses, phone numbers and IP addresses: it
catches the common forms, not every form, and rejected records are written with the matches masked.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from gristmill.chat import ChatFormatError, validate_messages
from gristmill.synth.config import SynthConfig
from gristmill.synth.tasks import Draft

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
PII_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    # "+44 20 7946 0958", "+1-555-010-9999"; and North-American "(555) 010-9999", "555.010.9999"
    "phone": re.compile(
        r"(?<![\w+])(?:\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}\d"
        r"|\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4})\b"
    ),
    "ip": re.compile(
        rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.])"
        r"|\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b"
    ),
}


def find_pii(text: str) -> list[str]:
    """Kinds of personal data found in ``text`` (``email``, ``phone``, ``ip``), in a fixed order."""
    return [kind for kind, pat in PII_PATTERNS.items() if pat.search(text)]


def mask_pii(text: str) -> str:
    for kind, pat in PII_PATTERNS.items():
        text = pat.sub(f"[{kind.upper()}]", text)
    return text


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
        if cfg.pii_filter and find_pii(prompt + "\n" + answer):
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
