"""Privacy of the synthetic set: personal data in the sources replaced before generation, and a report of
how much of the sources each synthetic record repeats.

:class:`SourceSubstitution` runs over the documents a split's generators read and replaces personal data
with consistent realistic substitutes (:class:`gristmill.curate.pii.PIISubstituter`, the one PII home), so
no generator, rule-based or teacher, ever sees the real values.

:func:`privacy_report` compares every synthetic record with the original (unsubstituted) sources, cut into
source records of ``passage_words`` words: its nearest source record by word n-gram overlap (an inverted
index of the sources' n-grams, so the cost grows with the corpus, not with records x sources), the longest
span it copies verbatim (in words and characters, words compared case-folded), and, given an embedding
function, the cosine similarity to that nearest source record. :func:`summarize` gives the figures the
manifest and report show, the share of records copying a span of at least ``long_span_words`` words first.
The embeddings come from the caller (the stage passes MiniLM's, from ``gristmill.inference.embed``): this
package does not import torch.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from gristmill.formats.document import Document
from gristmill.synth.config import PrivacyConfig


class SourceSubstitution:
    """Replaces personal data in each document's text and title (one :class:`Substitution` per document,
    so a name in the title and the body gets the same substitute); counts what it replaced."""

    def __init__(self, cfg: PrivacyConfig, seed: int) -> None:
        from gristmill.curate.pii import PIISubstituter

        self.substituter = PIISubstituter(seed, names=cfg.substitute_names)
        self.counts: Counter[str] = Counter()
        self.documents = 0
        self.changed = 0

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        for doc in docs:
            sub = self.substituter.document(doc.id)
            before = sum(self.counts.values())
            doc.text = sub(doc.text)
            if doc.provenance.title:
                doc.provenance.title = sub(doc.provenance.title)
            self.counts.update(sub.counts)
            self.documents += 1
            self.changed += sum(self.counts.values()) > before
            yield doc

    def summary(self) -> dict[str, Any]:
        """``{"documents", "documents_changed", "substituted": {kind: spans}}``."""
        return {"documents": self.documents, "documents_changed": self.changed,
                "substituted": dict(sorted(self.counts.items()))}


# ------------------------------------------------------------------------------------------ privacy report

_WORD = re.compile(r"\w+")
HITS_PER_NGRAM = 256
"""At most this many source positions are followed for one n-gram (a stock phrase that occurs thousands of
times says nothing about which source a record is nearest to, and would make the lookup quadratic)."""


def _words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    ms = list(_WORD.finditer(text))
    return [m.group().casefold() for m in ms], [m.span() for m in ms]


def _ngram_hashes(words: Sequence[str], n: int) -> np.ndarray:
    count = max(0, len(words) - n + 1)
    return np.fromiter((hash(tuple(words[i:i + n])) for i in range(count)), dtype=np.int64, count=count)


class SourceIndex:
    """The sources' word n-grams, sorted by hash: ``lookup`` finds where each n-gram of a text occurs.

    Memory is about 16 bytes per source word, plus the texts (kept to embed the nearest source records).
    """

    def __init__(self, docs: Iterable[Document], n: int, passage_words: int) -> None:
        self.n, self.passage_words = n, passage_words
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.spans: list[list[tuple[int, int]]] = []
        hashes, where_doc, where_pos = [], [], []
        for doc in docs:
            words, spans = _words(doc.text)
            h = _ngram_hashes(words, n)
            hashes.append(h)
            where_doc.append(np.full(len(h), len(self.ids), dtype=np.int32))
            where_pos.append(np.arange(len(h), dtype=np.int32))
            self.ids.append(doc.id)
            self.texts.append(doc.text)
            self.spans.append(spans)
        allh = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.int64)
        order = np.argsort(allh, kind="stable")
        self.hashes = allh[order]
        self.doc = (np.concatenate(where_doc) if where_doc else np.zeros(0, dtype=np.int32))[order]
        self.pos = (np.concatenate(where_pos) if where_pos else np.zeros(0, dtype=np.int32))[order]

    def lookup(self, hashes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each query n-gram, the (documents, positions) where the sources have it."""
        lo = np.searchsorted(self.hashes, hashes, side="left")
        hi = np.minimum(np.searchsorted(self.hashes, hashes, side="right"), lo + HITS_PER_NGRAM)
        return [(self.doc[a:b], self.pos[a:b]) for a, b in zip(lo, hi, strict=True)]

    def passage(self, doc: int, k: int) -> str:
        """Source record ``k`` of document ``doc``: its words ``k*passage_words`` .. as written."""
        spans = self.spans[doc]
        first = k * self.passage_words
        if not spans or first >= len(spans):
            return ""
        last = min(len(spans), first + self.passage_words) - 1
        return self.texts[doc][spans[first][0]:spans[last][1]]


def record_text(record: dict[str, Any]) -> str:
    """What a synthetic record teaches: its user and assistant turns (a shared system prompt is not data)."""
    return "\n".join(m["content"] for m in record["messages"] if m["role"] != "system")


def compare(text: str, index: SourceIndex) -> dict[str, Any]:
    """One record against the sources: nearest source record by n-gram overlap and the longest verbatim span."""
    words, spans = _words(text)
    hits = index.lookup(_ngram_hashes(words, index.n))
    per_passage: Counter[tuple[int, int]] = Counter()
    run: dict[tuple[int, int], int] = {}  # (doc, source position) -> matching n-grams ending there
    best = (0, -1, -1)  # (run length in n-grams, record n-gram index where it ends, doc)
    for i, (docs, pos) in enumerate(hits):
        nxt: dict[tuple[int, int], int] = {}
        for d, p in zip(docs.tolist(), pos.tolist(), strict=True):
            length = run.get((d, p - 1), 0) + 1
            nxt[(d, p)] = length
            if length > best[0]:
                best = (length, i, d)
        for key in {(d, p // index.passage_words) for d, p in zip(docs.tolist(), pos.tolist(), strict=True)}:
            per_passage[key] += 1
        run = nxt
    row: dict[str, Any] = {"ngrams": len(hits), "nearest_source": None, "nearest_passage": None,
                           "ngram_overlap": 0.0, "longest_span_words": 0, "longest_span_chars": 0,
                           "longest_span_source": None}
    if per_passage:
        (d, k), shared = min(per_passage.items(), key=lambda kv: (-kv[1], kv[0]))
        row.update(nearest_source=index.ids[d], nearest_passage=k, ngram_overlap=round(shared / len(hits), 4))
    if best[0]:
        length, end, d = best
        first_word, last_word = end - length + 1, end + index.n - 1
        row.update(longest_span_words=length + index.n - 1,
                   longest_span_chars=spans[last_word][1] - spans[first_word][0], longest_span_source=index.ids[d])
    return row


def privacy_report(records: Iterable[tuple[str, dict[str, Any]]], sources: Iterable[Document], *, ngram: int,
                   passage_words: int, long_span_words: int,
                   embed: Callable[[list[str]], np.ndarray] | None = None) -> list[dict[str, Any]]:
    """One row per ``(split, record)``: ``{"id", "split", "task", "nearest_source", "nearest_passage",
    "ngram_overlap", "longest_span_words", "longest_span_chars", "longest_span_source", "copies_long_span",
    "embedding_similarity"}``. ``ngram_overlap`` is the share of the record's word n-grams found in its
    nearest source record; ``embed`` maps texts to unit vectors (None: no similarity)."""
    index = SourceIndex(sources, ngram, passage_words)
    rows, texts = [], []
    for split, rec in records:
        text = record_text(rec)
        row = {"id": rec["id"], "split": split, "task": rec.get("task"), **compare(text, index)}
        row["copies_long_span"] = row["longest_span_words"] >= long_span_words
        row["embedding_similarity"] = None
        del row["ngrams"]
        rows.append(row)
        texts.append(text)
    if embed is not None and rows:
        doc_at = {doc_id: i for i, doc_id in enumerate(index.ids)}
        keys = sorted({(r["nearest_source"], r["nearest_passage"]) for r in rows if r["nearest_source"]})
        passages = [index.passage(doc_at[d], k) for d, k in keys]
        vecs = embed(texts + passages)
        rec_vecs, passage_vecs = vecs[:len(texts)], dict(zip(keys, vecs[len(texts):], strict=True))
        for row, v in zip(rows, rec_vecs, strict=True):
            if row["nearest_source"] is not None:
                sim = float(np.dot(v, passage_vecs[(row["nearest_source"], row["nearest_passage"])]))
                row["embedding_similarity"] = round(sim, 4)
    return rows


def summarize(rows: Sequence[dict[str, Any]], long_span_words: int) -> dict[str, Any]:
    """The privacy report's figures: the share of records that copy a span of at least ``long_span_words``
    words, the spans' and overlaps' distribution, the mean similarity, and the share by task."""
    if not rows:
        return {"records": 0}
    spans = [r["longest_span_words"] for r in rows]
    sims = [r["embedding_similarity"] for r in rows if r["embedding_similarity"] is not None]
    by_task: dict[str, dict[str, Any]] = {}
    for task in sorted({str(r["task"]) for r in rows}):
        mine = [r for r in rows if str(r["task"]) == task]
        by_task[task] = {"records": len(mine),
                         "copying_share": round(sum(r["copies_long_span"] for r in mine) / len(mine), 4)}
    copying = sum(r["copies_long_span"] for r in rows)
    return {
        "records": len(rows),
        "long_span_words": long_span_words,
        "copying_records": copying,
        "copying_share": round(copying / len(rows), 4),
        "longest_span_words_median": statistics.median(spans),
        "longest_span_words_max": max(spans),
        "ngram_overlap_mean": round(statistics.fmean(r["ngram_overlap"] for r in rows), 4),
        "embedding_similarity_mean": round(statistics.fmean(sims), 4) if sims else None,
        "by_task": by_task,
    }
