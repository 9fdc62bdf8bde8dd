"""The data card: what curation did to a corpus, in one JSON document (``prepare/data_card.json``).

For every step: documents and UTF-8 bytes seen, kept and dropped, each drop reason with its count, its
bytes, the config key that decides it and the first few documents it dropped (their start); the step's own
counts (PII found per kind, lines C4 removed, MinHash clusters, languages detected). For the documents
kept: histograms of length, language and a few quality signals (those the steps stored in
``meta.quality``), so a threshold can be judged against the distribution it cuts. The card is filled as
documents stream past (:meth:`DataCard.dropped`, :meth:`DataCard.kept`) and holds only counts and a few
examples, whatever the corpus size.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from gristmill.data.step import StepStats
from gristmill.formats.document import Document

LENGTH_EDGES = (0, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
                1_000_000)
"""Bins of document length, in characters (the last bin is open above)."""
_TENTHS = tuple(i / 10 for i in range(11))
SIGNAL_EDGES: dict[str, tuple[float, ...]] = {
    "language_score": _TENTHS,
    "gopher_mean_word_length": tuple(range(13)),
    "gopher_stop_words": tuple(range(9)),
    "gopher_alpha_words": _TENTHS,
    "gopher_dup_line_fraction": _TENTHS,
    "gopher_top_2gram_chars": _TENTHS,
    "fineweb_line_punct_ratio": _TENTHS,
    "fineweb_short_line_ratio": _TENTHS,
    "c4_sentences": (0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000),
}
"""The signals drawn, with their bins (a signal no step stored is left out)."""


class Histogram:
    """Counts of values in fixed bins: ``edges[i] <= v < edges[i+1]``; the last bin is open above."""

    def __init__(self, edges: Sequence[float]) -> None:
        self.edges = list(edges)
        self.counts = [0] * len(self.edges)

    def add(self, value: float) -> None:
        self.counts[max(0, bisect.bisect_right(self.edges, value) - 1)] += 1

    def as_dict(self) -> dict[str, Any]:
        return {"edges": self.edges, "counts": self.counts}


class DataCard:
    """Fills the card as documents stream through prepare; :meth:`build` returns it."""

    def __init__(self, examples: int = 3, example_chars: int = 300) -> None:
        self.examples, self.example_chars = examples, example_chars
        self._examples: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.length = Histogram(LENGTH_EDGES)
        self.dropped_length = Histogram(LENGTH_EDGES)
        self.languages: Counter[str] = Counter()
        self.signals: dict[str, Histogram] = {}

    def dropped(self, doc: Document, step: str, reason: str) -> None:
        """A document a step dropped (call it from the quarantine sink)."""
        self.dropped_length.add(len(doc.text))
        shown = self._examples.setdefault((step, reason), [])
        if len(shown) < self.examples:
            text = doc.text[: self.example_chars]
            shown.append({"id": doc.id, "source": doc.source, "title": doc.provenance.title,
                          "characters": len(doc.text),
                          "text": text + ("…" if len(doc.text) > self.example_chars else "")})

    def dropped_part(self) -> dict[str, Any]:
        """What :meth:`dropped` gathered, as JSON (a unit of work's share, merged with :meth:`add_dropped`)."""
        return {"examples": {f"{step}\t{reason}": ex for (step, reason), ex in self._examples.items()},
                "dropped_length": self.dropped_length.counts}

    def add_dropped(self, part: dict[str, Any]) -> None:
        """Merge a unit of work's :meth:`dropped_part`; parts merged in input order keep the first examples."""
        for key, examples in part["examples"].items():
            step, reason = key.split("\t", 1)
            shown = self._examples.setdefault((step, reason), [])
            shown.extend(examples[: self.examples - len(shown)])
        self.dropped_length.counts = [a + b for a, b in zip(self.dropped_length.counts, part["dropped_length"],
                                                                strict=True)]

    def kept(self, doc: Document) -> None:
        """A document that reached a split."""
        self.length.add(len(doc.text))
        meta = doc.meta
        lang = meta.get("language")
        if lang is not None:
            self.languages[str(lang)] += 1
        values: dict[str, Any] = dict(meta.get("quality") or {})
        if "language_score" in meta:
            values["language_score"] = meta["language_score"]
        for name, edges in SIGNAL_EDGES.items():
            v = values.get(name)
            if isinstance(v, int | float):
                hist = self.signals.get(name)
                if hist is None:
                    hist = self.signals[name] = Histogram(edges)
                hist.add(v)

    def build(self, stats: Sequence[StepStats], *, reason_keys: Mapping[str, Mapping[str, str | None]],
              details: Mapping[str, Any], splits: Mapping[str, Any], documents_in: int,
              warnings: Sequence[str]) -> dict[str, Any]:
        """The card as a JSON-ready dict. ``reason_keys``: step -> reason -> the config key deciding it;
        ``details``: step -> the step's own summary; ``splits``: what went to train and val."""
        steps = []
        for st in stats:
            keys = reason_keys.get(st.name, {})
            dropped = {r: {"documents": n, "bytes": int(st.dropped_bytes.get(r, 0)), "key": keys.get(r),
                           "examples": self._examples.get((st.name, r), [])}
                       for r, n in sorted(st.dropped.items(), key=lambda kv: (-kv[1], kv[0]))}
            entry: dict[str, Any] = {
                "step": st.name, "seen": st.seen, "kept": st.kept, "changed": st.changed,
                "dropped_documents": sum(st.dropped.values()), "bytes_in": st.bytes_in, "bytes_out": st.bytes_out,
                "dropped_bytes": sum(st.dropped_bytes.values()), "dropped": dropped}
            if st.name in details:
                entry["details"] = details[st.name]
            steps.append(entry)
        first = stats[0] if stats else None
        return {
            "documents_in": documents_in,
            "bytes_in": first.bytes_in if first else 0,
            "documents_kept": sum(int(s.get("documents", 0)) for s in splits.values()),
            "bytes_kept": sum(int(s.get("bytes", 0)) for s in splits.values()),
            "splits": dict(splits),
            "steps": steps,
            "histograms": {
                "length_characters": self.length.as_dict(),
                "dropped_length_characters": self.dropped_length.as_dict(),
                "language": dict(sorted(self.languages.items(), key=lambda kv: (-kv[1], kv[0]))),
                "signals": {name: h.as_dict() for name, h in sorted(self.signals.items())},
            },
            "warnings": list(warnings),
        }
