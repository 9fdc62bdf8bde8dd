"""Near-duplicate removal: MinHash signatures, LSH buckets, clusters, one document kept per cluster.

Two documents are near duplicates when their sets of word 5-grams ("shingles") overlap a lot: the
Jaccard similarity |A ∩ B| / |A ∪ B| is high. MinHash (Broder 1997) estimates it: under a random hash
function, the smallest shingle hash of A equals that of B with probability exactly J(A, B), so the share
of equal entries between two signatures of K such minima estimates J. LSH banding turns that into
candidate pairs without comparing every pair: the K = b x r minima are cut into b bands of r rows, and
two documents whose band i is identical share bucket i. A pair is caught with probability
1 - (1 - J^r)^b; FineWeb's b = 14, r = 8 (the defaults) catch 92% of pairs at J = 0.8 and 99.96% at 0.9,
and only 5% at J = 0.5 (the curve crosses 1/2 near J = 0.72). Pairs that share a bucket are joined
(union-find) into clusters; the first document of each cluster by input order is kept and the others are
dropped with reason ``near_duplicate`` and ``meta["duplicate_of"]`` naming the kept document.

The arrays (signatures, bucket keys, candidate pairs, clusters) are in :mod:`gristmill.curate.dedup.lsh`,
imported when the step is built; this module holds the config, the step and the plain-Python statement
of the shingle rule.

Shingles. The text is lowercased and split into words, a word being a run of letters and digits
(``str.isalnum``, basic multilingual plane), so punctuation, case and spacing do not make two copies
differ. A document with fewer than 5 words has one shingle, its words; one without words has no
shingles, is in no bucket and is always kept. The language must put spaces between words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from gristmill.core.config import Config
from gristmill.data.step import StepStats
from gristmill.formats.document import Document


class MinHashStep(Config):
    """Near-duplicate removal with MinHash over word n-grams and LSH banding. Defaults are FineWeb's."""

    type: Literal["minhash"] = "minhash"
    """``minhash``."""
    ngram: int = Field(default=5, ge=1, le=32)
    """Words per shingle. Longer shingles make similarity stricter about word order."""
    bands: int = Field(default=14, ge=1, le=256)
    """LSH bands. With ``rows``, sets the similarity around which pairs start to be caught, about
    (1/bands)^(1/rows): 0.72 for 14 x 8."""
    rows: int = Field(default=8, ge=1, le=64)
    """Signature entries per band; signatures hold bands x rows entries (112 by default)."""
    seed: int = Field(default=1, ge=0, le=2**63 - 1)
    """Seed of the hash functions. Every shard of one corpus must use the same seed."""

    REASON_KEYS: ClassVar[dict[str, str]] = {"near_duplicate": "rows (more rows: only closer copies match)"}

    @model_validator(mode="after")
    def _size(self) -> MinHashStep:
        if self.bands * self.rows > 4096:
            raise ValueError(f"bands x rows is {self.bands * self.rows}; keep it at 4096 or below "
                             f"(FineWeb uses 14 x 8 = 112)")
        return self


_WORD = re.compile(r"[^\W_\U00010000-\U0010FFFF]+")


def words(text: str) -> list[str]:
    """The words MinHash sees: lowercased runs of letters and digits. The signature code finds the same
    words with array operations; this is the readable statement of the rule, for checks and debugging."""
    return _WORD.findall(text.lower())


def word_ngrams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """The shingle set whose Jaccard similarity the signatures estimate (fewer than ``n`` words: one
    shingle of all of them; no words: empty)."""
    w = words(text)
    if not w:
        return set()
    if len(w) < n:
        return {tuple(w)}
    return set(zip(*(w[k:] for k in range(n)), strict=False))


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|, and 1.0 for two empty sets."""
    return len(a & b) / len(a | b) if a or b else 1.0


class MinHashDedup:
    """Drop near duplicates of an earlier document (``near_duplicate``; ``meta.duplicate_of`` names the
    kept one), running the three phases of :mod:`~gristmill.curate.dedup.lsh` over one stream.

    Clusters need every signature, so the stream is read twice: the first pass hashes each batch of
    documents, writes their bucket keys to disk (:class:`~gristmill.curate.dedup.lsh.Buckets`) and parks
    the documents (:class:`~gristmill.curate.spool.DocumentSpool`: in memory up to ``memory_chars``
    characters of text, default ``spool.MEMORY_CHARS``, then on disk); once the stream ends the clusters
    are found and the second pass reads the documents back and yields them in input order, dropping the
    duplicates. Memory beyond the spool's cap: one batch of documents, plus about 40 bytes per document
    while the buckets are merged and 8 after (the cluster of each). ``work_dir``: where the scratch files
    go (None: the system's temporary folder). :meth:`clusters` lists the clusters of the last run,
    :meth:`cluster_records` the same with the start of each text.
    """

    name = "minhash"
    batch_size = 512  # documents hashed together: numpy work per call, not Python work per document
    example_chars = 200
    """Characters of each member kept for :meth:`cluster_records`."""

    def __init__(self, cfg: MinHashStep | None = None, work_dir: Path | None = None,
                 memory_chars: int | None = None) -> None:
        from gristmill.curate.dedup.lsh import MinHasher

        self.cfg = cfg if cfg is not None else MinHashStep()
        self.hasher = MinHasher.from_config(self.cfg)
        self.work_dir = work_dir
        self.memory_chars = memory_chars
        self._clusters: dict[str, list[str]] = {}
        self._starts: dict[str, str] = {}

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        import numpy as np

        from gristmill.curate.dedup.lsh import Buckets, clusters
        from gristmill.curate.spool import DocumentSpool

        spool = DocumentSpool(self.work_dir, self.memory_chars)
        buckets = Buckets(self.work_dir)
        try:
            batch: list[str] = []
            for doc in docs:
                spool.add(doc)
                batch.append(doc.text)
                if len(batch) == self.batch_size:
                    self._add(buckets, batch)
                    batch = []
            if batch:
                self._add(buckets, batch)
            roots = clusters(buckets.pairs(), buckets.n_docs)
        except BaseException:
            spool.close()
            buckets.close()
            raise
        # Only the kept document of each cluster is looked up later: remember those as they pass.
        heads = set(np.unique(roots[roots != np.arange(len(roots))]).tolist())
        head_of: dict[int, tuple[str, str]] = {}  # index -> id, start of text
        found: dict[str, list[str]] = {}
        starts: dict[str, str] = {}
        for i, (doc, root) in enumerate(zip(spool, roots.tolist(), strict=True)):
            if root == i:
                if i in heads:
                    head_of[i] = doc.id, doc.text[: self.example_chars]
                yield doc
                continue
            head, start = head_of[root]
            if head not in found:  # a cluster is listed when its first duplicate comes
                found[head] = [head]
                starts[head] = start
            found[head].append(doc.id)
            starts[doc.id] = doc.text[: self.example_chars]
            doc.meta["duplicate_of"] = head
            stats.drop(doc, "near_duplicate")
        self._clusters, self._starts = found, starts

    def _add(self, buckets: Any, texts: list[str]) -> None:
        from gristmill.curate.dedup.lsh import has_shingles

        sigs = self.hasher.signatures(texts)
        buckets.add(self.hasher.band_keys(sigs), has_shingles(sigs))

    def clusters(self) -> dict[str, list[str]]:
        """The clusters with more than one member from the last run: kept document id -> every member's
        id (the kept one first), in input order."""
        return {k: list(v) for k, v in self._clusters.items()}

    def cluster_records(self, examples: int = 3) -> Iterator[dict[str, Any]]:
        """One record per cluster, in the input order of each cluster's first duplicate: ``kept``, ``size``,
        ``members`` (every id, the kept one first) and ``examples`` (the first ``examples`` members' ids and the first
        200 characters of their text)."""
        for kept, members in self._clusters.items():
            yield {"kept": kept, "size": len(members), "members": list(members),
                   "examples": [{"id": m, "text": self._starts[m]} for m in members[:examples]]}

    def summary(self) -> dict[str, int]:
        """Clusters found in the last run and the documents they hold (kept and dropped)."""
        return {"clusters": len(self._clusters), "documents_in_clusters": sum(map(len, self._clusters.values()))}
