"""Checks every draft must pass; each failure has a reason that goes to ``rejected.jsonl`` and the stats.

In order, cheapest first: empty answer and chat format, the length limits, an answer copied from its
prompt, personal data (the one PII module, :mod:`gristmill.curate.pii`; rejected records are written with
the matches masked), then the ``filters`` of the config: refusals and cut-off answers (model-written
drafts only), groundedness in the source document (drafts that claim it), an exact repeat of an accepted
prompt, a near duplicate of an accepted draft or of a seed task (MinHash, :mod:`gristmill.curate.dedup`),
and overlap with evaluation text (13-grams, :mod:`gristmill.curate.decontam`). A draft is remembered for
the duplicate checks only once it passes every check. After a rejection :attr:`DraftFilter.detail` says
what was found (the share found, the draft or seed it repeats, the n-gram it shares).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gristmill.curate.decontam import NGramIndex
from gristmill.curate.decontam import words as decontam_words
from gristmill.curate.pii import mask_pii, pii_kinds
from gristmill.formats.chat import ChatFormatError, validate_messages
from gristmill.synth.base import Draft
from gristmill.synth.config import NearDuplicateFilter, SynthConfig

if TYPE_CHECKING:
    import numpy as np


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def copied(answer: str, prompt: str) -> bool:
    """Whether the answer appears in the prompt as whole words ("Ant" is not copied from "Antony")."""
    return re.search(rf"(?<!\w){re.escape(_norm(answer))}(?!\w)", _norm(prompt)) is not None


def prompt_key(draft: Draft) -> str:
    """Identity of a prompt for duplicate detection: case and whitespace do not make a new prompt."""
    return hashlib.sha256(_norm(draft.prompt).encode()).hexdigest()


# ------------------------------------------------------------------------------ refusal and truncation

_REFUSAL = re.compile(
    r"^\W*(?:i'?m|i am|we'?re|we are) (?:so |very |truly )?(?:sorry|afraid i|unable|not able)"
    r"|^\W*(?:i|we) (?:cannot|can't|can not|won't|will not|must decline|apologi[sz]e|do not have access)"
    r"|^\W*(?:sorry|unfortunately),? (?:but )?(?:i|we)\b"
    r"|\bas an? (?:ai|artificial intelligence|(?:large )?language model|ai language model|ai assistant)\b"
    r"|\bi(?:'m| am) (?:not able|unable) to (?:help|assist|answer|provide|comply|fulfil)"
    r"|\b(?:i|we) (?:cannot|can't) (?:help|assist|answer|provide|comply|fulfil) (?:with )?(?:that|this|you)",
    re.IGNORECASE | re.MULTILINE,
)
_CLOSED = (".", "!", "?", '"', "'", "”", "’", ")", "]", "}", "`", "*", "…", ":")


def refuses(answer: str) -> bool:
    """Whether an answer refuses or apologises instead of answering: a sentence opening with "I'm sorry",
    "I cannot", "Unfortunately, I" ..., or "as an AI / a language model" anywhere in its first 400
    characters."""
    return _REFUSAL.search(answer[:400].replace("’", "'")) is not None


def truncated(answer: str, finish_reason: str | None) -> bool:
    """Whether a model-written answer was cut off: the model hit its token limit, a code block is left
    open, or the last line is a sentence (8 or more words) that does not end with closing punctuation.
    A list or a short last line may end bare."""
    if finish_reason == "length":
        return True
    text = answer.rstrip()
    if text.count("```") % 2:
        return True
    last = text.rsplit("\n", 1)[-1].strip()
    return len(last.split()) >= 8 and not last.endswith(_CLOSED)


# ------------------------------------------------------------------------------------------ groundedness

FUNCTION_WORDS = frozenset(
    "a an the and or but nor so yet of to in on at by for with from as into onto about over under than then "
    "is are was were be been being am do does did have has had it its this that these those there here "
    "i you he she we they me him her us them my your his our their not no".split()
)
"""Words that say nothing of the content: an n-gram made only of these does not count for groundedness."""


def content_ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of ``words`` that hold a word not in :data:`FUNCTION_WORDS`."""
    grams = (tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return [g for g in grams if not all(w in FUNCTION_WORDS for w in g)]


class SourceNgrams:
    """A source text's word n-grams, made once per size asked for (the drafts of one document share it)."""

    def __init__(self, text: str) -> None:
        self.words = decontam_words(text)
        self._sets: dict[int, set[tuple[str, ...]]] = {}

    def of(self, n: int) -> set[tuple[str, ...]]:
        if n not in self._sets:
            w = self.words
            self._sets[n] = {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}
        return self._sets[n]

    def share(self, answer: str, n: int) -> float:
        """Share of the answer's content n-grams found in the source (an answer shorter than ``n`` words
        is judged by n-grams of its length; one with no content word counts as found: 1.0)."""
        words = decontam_words(answer)
        k = max(1, min(n, len(words)))
        grams = content_ngrams(words, k)
        if not grams:
            return 1.0
        held = self.of(k)
        return sum(g in held for g in grams) / len(grams)


def grounded_share(answer: str, source: str, n: int = 2) -> float:
    """Share of the answer's content n-grams (lowercased words of letters and digits) that the source holds."""
    return SourceNgrams(source).share(answer, n)


# --------------------------------------------------------------------------------------- near duplicates


class NearDuplicates:
    """Texts seen so far (accepted drafts, seed tasks) as MinHash signatures in LSH buckets; :meth:`find`
    returns the first one whose estimated Jaccard similarity to a new text reaches the threshold.

    20 bands of 5 rows: the estimate is then compared only with texts sharing a band, which finds a pair at
    similarity 0.7 with probability 1 - (1 - 0.7^5)^20 = 97.5%. Memory: 400 bytes of signature per text.
    """

    bands, rows = 20, 5

    def __init__(self, cfg: NearDuplicateFilter) -> None:
        from gristmill.curate.dedup.lsh import MinHasher

        self.threshold = cfg.threshold
        self.hasher = MinHasher(ngram=cfg.ngram, bands=self.bands, rows=self.rows, seed=1)
        self._buckets: dict[int, list[int]] = {}
        self._sigs: list[np.ndarray] = []
        self.labels: list[str] = []

    def __len__(self) -> int:
        return len(self.labels)

    def _signature(self, text: str) -> tuple[np.ndarray, list[int]] | None:
        from gristmill.curate.dedup.lsh import has_shingles

        sig = self.hasher.signatures([text])
        if not has_shingles(sig)[0]:
            return None  # no words: nothing to compare
        return sig[0], [int(k) for k in self.hasher.band_keys(sig)[0]]

    def find(self, text: str) -> tuple[str, float] | None:
        """The label of the first stored text at or above the threshold and its estimated similarity."""
        from gristmill.curate.dedup.lsh import estimate_jaccard

        found = self._signature(text)
        if found is None:
            return None
        sig, keys = found
        candidates = sorted({i for k in keys for i in self._buckets.get(k, ())})
        for i in candidates:
            sim = estimate_jaccard(sig, self._sigs[i])
            if sim >= self.threshold:
                return self.labels[i], sim
        return None

    def add(self, text: str, label: str) -> None:
        found = self._signature(text)
        if found is None:
            return
        sig, keys = found
        for k in keys:
            self._buckets.setdefault(k, []).append(len(self._sigs))
        self._sigs.append(sig)
        self.labels.append(label)


# ------------------------------------------------------------------------------------------------ filter


class DraftFilter:
    """Applies the checks in order and remembers the drafts already accepted (within and across splits).

    Before the first draft, the stage hands over what the config names: :meth:`add_seeds` (seed tasks
    the drafts must not repeat) and :meth:`hold_out` (evaluation text the train drafts must not share).
    """

    def __init__(self, cfg: SynthConfig) -> None:
        self.cfg = cfg
        f = cfg.filters
        self.seen_prompts: set[str] = set()
        self.near = NearDuplicates(f.near_duplicates) if f.near_duplicates.enabled else None
        self.held_out = NGramIndex(f.decontaminate.ngram) if f.decontaminate.enabled else None
        self.seeds = 0
        self.detail: str | None = None
        """What the last rejection found, for the rejected record (None after an acceptance)."""
        self.checked: dict[str, int] = {"refusal": 0, "truncation": 0, "groundedness": 0,
                                         "near_duplicates": 0, "decontaminate": 0}
        """Drafts each optional check looked at; each skips drafts it does not apply to (answers not written
        by a model, drafts that claim no grounding, val drafts for decontamination, drafts rejected earlier)."""
        self._source: tuple[str, SourceNgrams] | None = None

    def add_seeds(self, texts: Iterable[str]) -> int:
        """Remember seed tasks; a draft near one is rejected (``near_duplicate_seed``). Returns how many."""
        added = 0
        if self.near is not None:
            for text in texts:
                self.near.add(text, f"seed:{self.seeds + added}")
                added += 1
        self.seeds += added
        return added

    def hold_out(self, texts: Iterable[tuple[str, str]]) -> None:
        """Index ``(label, text)`` pairs of evaluation text; train drafts sharing its n-grams are rejected."""
        if self.held_out is not None:
            for label, text in texts:
                self.held_out.add(text, label)

    def _text(self, draft: Draft) -> str:
        if self.cfg.filters.near_duplicates.compare == "prompt":
            return draft.prompt
        return draft.prompt + "\n" + draft.answer

    def _grounded(self, draft: Draft, source: str) -> float:
        if self._source is None or (self._source[0] is not source and self._source[0] != source):
            # a document's drafts come one after another: its n-grams are made once
            self._source = (source, SourceNgrams(source))
        return self._source[1].share(draft.answer, self.cfg.filters.groundedness.ngram)

    def reason(self, draft: Draft, source: str | None = None, *, split: str = "train") -> str | None:
        """Why ``draft`` is rejected, or None to accept it (and remember it for the duplicate checks).

        ``source``: the text of the document the draft was made from (for the groundedness check);
        ``split``: only ``train`` drafts are checked against the held-out text, since ``val`` drafts are
        made from the validation documents themselves.
        """
        self.detail = None
        cfg, f = self.cfg, self.cfg.filters
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
        written = draft.finish_reason is not None
        if f.refusal and written:
            self.checked["refusal"] += 1
            if refuses(answer):
                return "refusal"
        if f.truncation and written:
            self.checked["truncation"] += 1
            if truncated(answer, draft.finish_reason):
                self.detail = f"finish_reason {draft.finish_reason}"
                return "truncated"
        if f.groundedness.enabled and draft.grounded and source is not None:
            self.checked["groundedness"] += 1
            share = self._grounded(draft, source)
            if share < f.groundedness.min_share:
                self.detail = f"{share:.2f} of the answer's {f.groundedness.ngram}-grams are in the source"
                return "ungrounded"
        key = prompt_key(draft)
        if key in self.seen_prompts:
            return "duplicate_prompt"
        text = self._text(draft)
        if self.near is not None:
            self.checked["near_duplicates"] += 1
            found = self.near.find(text)
            if found is not None:
                label, sim = found
                self.detail = f"similarity {sim:.2f} to {label}"
                return "near_duplicate_seed" if label.startswith("seed:") else "near_duplicate"
        if self.held_out is not None and split == "train":
            self.checked["decontaminate"] += 1
            hit = self.held_out.matches(prompt + "\n" + answer)
            if hit is not None and hit[0] >= f.decontaminate.min_matches:
                count, ngram, label = hit
                self.detail = f"{count} shared {self.held_out.n}-gram(s) with {label}, e.g. '{ngram}'"
                return "contaminated"
        self.seen_prompts.add(key)
        if self.near is not None:
            self.near.add(text, f"{split}:{'+'.join(draft.source_ids)}:{draft.task}")
        return None

    def summary(self) -> dict[str, Any]:
        """What the optional checks looked at: drafts checked per check, seed tasks, held-out texts."""
        out: dict[str, Any] = {"checked": dict(self.checked), "seed_tasks": self.seeds}
        if self.held_out is not None:
            idx = self.held_out
            out["held_out"] = {"texts": idx.texts, "texts_too_short": idx.short_texts, "ngrams": len(idx)}
        return out

    def masked(self, messages: Iterable[dict[str, str]]) -> list[dict[str, str]]:
        """Messages safe to write into ``rejected.jsonl`` (personal data masked when the guard is on)."""
        if not self.cfg.pii_filter:
            return list(messages)
        return [{**m, "content": mask_pii(m["content"])} for m in messages]
