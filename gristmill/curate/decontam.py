"""Decontamination: drop training documents that share word n-grams with held-out text.

A model trained on the text it is evaluated on scores too well. GPT-3 (Brown et al. 2020, appendix C)
counted a training document as contaminated when it shared a 13-gram with an evaluation example; this
step does the same against the texts it is handed: the run's own validation split (the documents whose id
hashes to ``val``, see :mod:`gristmill.curate.split`) and any held-out or task files the recipe names.
It knows no evaluation suite; the prepare stage reads the files and hands their texts over.

Words are the lowercased runs of letters and digits (as for MinHash), so case, punctuation and line
breaks do not hide a copy. A text with fewer than ``ngram`` words has no n-gram and is not indexed (the
summary counts such texts). Each distinct word gets an integer id; an n-gram is a 64-bit polynomial hash
of its ids, so the index is one sorted array of 8 bytes per n-gram of held-out text.

Validation documents pass through at once; training documents wait (on disk past a memory cap) until the
stream ends (the last validation document may come after them) and are then judged, in their order. A dropped document's
``meta.contamination`` names how many distinct n-grams matched, the first match's words, and what it
matched (``val:<id>`` or ``<file>:<record>``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from gristmill.core.config import Config
from gristmill.core.jsonl import read_jsonl
from gristmill.core.workspace import read_json
from gristmill.curate.split import split_of
from gristmill.data.step import StepStats
from gristmill.formats.document import Document

if TYPE_CHECKING:
    import numpy as np

_WORD = re.compile(r"[^\W_]+")
_BASE = 0x9E3779B97F4A7C15  # odd, so every position changes the hash
_UNKNOWN = 0xFFFFFFFFFFFFFFFF  # id of a word no held-out text has: an n-gram holding it matches nothing
RECORD_SUFFIXES = (".jsonl", ".ndjson", ".json")
SKIPPED_SUFFIXES = (".yaml", ".yml", ".py")
"""Task definitions (lm-evaluation-harness YAML, Python) name their data; they are not held-out text."""


class DecontaminateStep(Config):
    """Drop training documents sharing word n-grams with the validation split or held-out files."""

    type: Literal["decontaminate"] = "decontaminate"
    """``decontaminate``."""
    ngram: int = Field(default=13, ge=3, le=64)
    """Words per n-gram (GPT-3's 13). Shorter n-grams find more overlap, and more of it by chance."""
    val: bool = True
    """Check training documents against the run's validation split (documents are judged by the split
    their id gives them; list this step last so that no later step drops a validation document)."""
    files: list[str] = []
    """Held-out and task files to check against too (paths, globs, folders or ``pkg://``): text files
    whole; ``.jsonl``/``.json`` one text per record (its string fields); YAML and Python task definitions
    are skipped. The files the recipe's evaluate section scores on are added by ``from_evaluate``."""
    from_evaluate: bool = True
    """Check against the files the recipe's evaluate section names too: ``evaluate.heldout_files`` and
    the task files of ``evaluate.tasks`` with the local data files they name (evaluate's built-in tasks
    are made from the validation split, which ``val`` covers). Their contents are part of prepare's cache
    key, so changing one re-runs prepare."""
    min_matches: int = Field(default=1, ge=1, le=1_000_000)
    """Drop a training document that shares at least this many distinct n-grams (reason ``contaminated``)."""

    REASON_KEYS: ClassVar[dict[str, str]] = {"contaminated": "min_matches / ngram / files"}


def words(text: str) -> list[str]:
    """Lowercased runs of letters and digits."""
    return _WORD.findall(text.lower())


class NGramIndex:
    """Word n-grams of held-out texts, each with the label of the first text that has it."""

    def __init__(self, n: int = 13) -> None:
        self.n = n
        self.vocab: dict[str, int] = {}
        self.labels: list[str] = []
        self.texts = 0
        self.short_texts = 0
        """Texts with fewer than ``n`` words (not indexed)."""
        self._parts: list[tuple[Any, int]] = []
        self._hashes: Any = None
        self._label_of: Any = None

    def _hash(self, ids: np.ndarray) -> np.ndarray:
        import numpy as np

        m = len(ids) - self.n + 1
        h = ids[:m].copy()
        base = np.uint64(_BASE)
        for k in range(1, self.n):
            h *= base
            h += ids[k : m + k]
        return h

    def add(self, text: str, label: str) -> None:
        import numpy as np

        ws = words(text)
        self.texts += 1
        if len(ws) < self.n:
            self.short_texts += 1
            return
        vocab = self.vocab
        ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in ws), dtype=np.uint64, count=len(ws))
        self.labels.append(label)
        self._parts.append((self._hash(ids), len(self.labels) - 1))
        self._hashes = None

    def _built(self) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        if self._hashes is None:
            if self._parts:
                hashes = np.concatenate([h for h, _ in self._parts])
                labels = np.concatenate([np.full(len(h), i, dtype=np.int32) for h, i in self._parts])
            else:
                hashes, labels = np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int32)
            order = np.argsort(hashes, kind="stable")  # stable: an n-gram keeps its first text's label
            hashes, labels = hashes[order], labels[order]
            first = np.ones(len(hashes), dtype=bool)
            first[1:] = hashes[1:] != hashes[:-1]
            self._hashes, self._label_of = hashes[first], labels[first]
        return self._hashes, self._label_of

    def __len__(self) -> int:
        return len(self._built()[0])

    def matches(self, text: str) -> tuple[int, str, str] | None:
        """How many distinct n-grams of ``text`` are in the index, the first one's words and its label;
        None when there are none."""
        import numpy as np

        index, label_of = self._built()
        ws = words(text)
        if len(ws) < self.n or not len(index):
            return None
        vocab = self.vocab
        ids = np.fromiter((vocab.get(w, _UNKNOWN) for w in ws), dtype=np.uint64, count=len(ws))
        h = self._hash(ids)
        at = np.minimum(np.searchsorted(index, h), len(index) - 1)
        hit = index[at] == h
        if not hit.any():
            return None
        first = int(np.argmax(hit))
        return (len(np.unique(h[hit])), " ".join(ws[first : first + self.n]),
                self.labels[int(label_of[at[first]])])


def held_out_texts(paths: Iterable[Path]) -> Iterator[tuple[str, str]]:
    """``(label, text)`` for each held-out text in ``paths`` (see ``DecontaminateStep.files``)."""
    for path in paths:
        suffix = path.suffix.lower()
        if suffix in SKIPPED_SUFFIXES:
            continue
        if suffix == ".json":
            yield str(path), "\n".join(_strings(read_json(path)))
        elif suffix in RECORD_SUFFIXES:
            for lineno, record in read_jsonl(path, hint="fix the file or leave it out of decontaminate.files"):
                yield f"{path}:{lineno}", "\n".join(_strings(record))
        else:
            yield str(path), path.read_text(encoding="utf-8", errors="replace")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


class Decontaminate:
    """Drop training documents sharing ``min_matches`` n-grams with held-out text (reason ``contaminated``).

    ``texts``: ``(label, text)`` pairs of held-out text (read by the caller); ``val_fraction``: the run's,
    so the step knows which documents are validation documents (``cfg.val``). Memory: the n-gram index of
    the held-out side (8 bytes per n-gram) and its vocabulary; training documents that must wait for the
    validation split wait in a :class:`~gristmill.curate.spool.DocumentSpool` (in memory up to
    ``memory_chars`` characters of text, then in a scratch file in ``work_dir``; None: the defaults).
    """

    name = "decontaminate"

    def __init__(self, cfg: DecontaminateStep | None = None, val_fraction: float = 0.0,
                 texts: Iterable[tuple[str, str]] = (), work_dir: Path | None = None,
                 memory_chars: int | None = None) -> None:
        self.cfg = cfg if cfg is not None else DecontaminateStep()
        self.val_fraction = val_fraction
        self.work_dir = work_dir
        self.memory_chars = memory_chars
        self.index = NGramIndex(self.cfg.ngram)
        for label, text in texts:
            self.index.add(text, label)
        self.files_texts = self.index.texts
        self.dropped_by: dict[str, int] = {}
        """What the dropped documents matched: ``val`` or a file, with counts."""

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        from gristmill.curate.spool import DocumentSpool

        check_val = self.cfg.val and self.val_fraction > 0
        # Training documents wait (on disk past a memory cap) until the last validation document has been indexed. Even
        # when there is none to index they wait, so that the order of the output, and of the drops of the
        # steps before this one, stays the same whatever is checked.
        spool = DocumentSpool(self.work_dir, self.memory_chars)
        try:
            for doc in docs:
                if self.val_fraction > 0 and split_of(doc.id, self.val_fraction) == "val":
                    if check_val:
                        self.index.add(doc.text, f"val:{doc.id}")
                    yield doc
                else:
                    spool.add(doc)
        except BaseException:
            spool.close()
            raise
        for doc in spool:
            if self._judge(doc, stats):
                yield doc

    def _judge(self, doc: Document, stats: StepStats) -> bool:
        """True to keep a training document; otherwise it is dropped through ``stats``."""
        found = self.index.matches(doc.text)
        if found is None or found[0] < self.cfg.min_matches:
            return True
        count, ngram, label = found
        doc.meta["contamination"] = {"matches": count, "ngram": ngram, "against": label}
        where = "val" if label.startswith("val:") else label.rsplit(":", 1)[0] if ":" in label else label
        self.dropped_by[where] = self.dropped_by.get(where, 0) + 1
        stats.drop(doc, "contaminated")
        return False

    def summary(self) -> dict[str, Any]:
        """Texts indexed, n-grams in the index, and what the dropped documents matched."""
        return {"held_out_texts": self.files_texts, "texts_indexed": self.index.texts - self.index.short_texts,
                "texts_too_short": self.index.short_texts, "ngrams": len(self.index),
                "dropped_by": dict(sorted(self.dropped_by.items()))}
