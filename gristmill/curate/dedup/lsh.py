"""MinHash signatures, LSH buckets and union-find clusters, in numpy: the arrays behind
:mod:`gristmill.curate.dedup.minhash`.

The work is three phases with plain arrays between them, so that each can run per shard and the middle
one keeps its data on disk:

1. :meth:`MinHasher.signatures`: texts -> ``[docs, K]`` uint32 signatures, and
   :meth:`MinHasher.band_keys`: -> ``[docs, b]`` uint64 bucket keys. Per shard, no shared state.
2. :class:`Buckets`: writes every shard's bucket keys to one file per band (``add``), then reads the
   bands back one at a time and sorts each into candidate pairs (``pairs``): memory per document is a
   few bytes, not its text.
3. :func:`clusters`: pairs -> the index each document is kept as; the filter drops the others.

Hashing, all in numpy over a whole batch of texts (no Python loop per word). A word's hash is a
polynomial in its code points modulo 2^64, computed for every word at once from one prefix sum, then
mixed (the splitmix64 finaliser). A shingle's hash combines its words' hashes with a fixed odd
multiplier per position, mixed again, and keeps the top 32 bits. The K hash functions are
h_k(x) = ((a_k x + b_k) mod 2^64) >> 32 with odd random a_k: Dietzfelbinger's multiply-add-shift
family, 2-independent like the textbook (a x + b) mod p but with no division, which makes the signature
step about five times faster in numpy (uint64 ``%`` is a division per element). All constants come from
``seed`` through splitmix64 in plain Python integers, so a signature is the same on every machine and
numpy version, which shards hashed in different places rely on.

Bucket keys are 64-bit hashes of (band number, the band's r minima); at a billion documents the
expected number of false bucket collisions over all bands is below one. This module imports numpy, so
the step module (and loading a recipe) does not.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gristmill.curate.dedup.minhash import MinHashStep

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_EMPTY = np.uint32(0xFFFFFFFF)  # every entry of the signature of a text without words
_CHUNK = 8192  # shingles per [K, chunk] block of the signature step: ~7 MiB of uint64 at K = 112


def _splitmix64(seed: int, n: int) -> list[int]:
    """``n`` well-mixed 64-bit integers from ``seed`` (splitmix64), identical on every platform."""
    out = []
    state = seed & _M64
    for _ in range(n):
        state = (state + _GOLDEN) & _M64
        z = state
        z = ((z ^ (z >> 30)) * _MIX1) & _M64
        z = ((z ^ (z >> 27)) * _MIX2) & _M64
        out.append(z ^ (z >> 31))
    return out


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, in place on a uint64 array: every input bit moves every output bit."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(_MIX1)
    x ^= x >> np.uint64(27)
    x *= np.uint64(_MIX2)
    x ^= x >> np.uint64(31)
    return x


@functools.cache
def _word_chars() -> np.ndarray:
    """For each code point of the basic multilingual plane, whether it belongs to a word (``isalnum``).
    Built on first use (about 10 ms), never at import."""
    return np.fromiter((chr(c).isalnum() for c in range(0x10000)), dtype=bool, count=0x10000)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """MinHash's estimate of the Jaccard similarity of two documents: the share of equal entries."""
    return float(np.mean(sig_a == sig_b))


class MinHasher:
    """Phase 1: signatures and bucket keys for a batch of texts (one shard, or part of one).

    The same parameters and seed give the same signature for a text whatever batch it is in, on any
    machine: hash a corpus shard by shard, in parallel, and merge the keys in :class:`Buckets`.
    ``batch_chars``: texts are hashed together until they reach this many characters, which sets the
    working memory (about 50 bytes per character, at least the longest text); 128 Ki was the fastest
    setting measured on 2 KB documents, whose arrays then stay in the CPU caches.
    """

    def __init__(self, ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1,
                 batch_chars: int = 1 << 17) -> None:
        self.ngram, self.bands, self.rows = ngram, bands, rows
        self.num_hashes = bands * rows
        self.batch_chars = batch_chars
        k = self.num_hashes
        consts = _splitmix64(seed, 2 * k + ngram + rows + bands + 1)
        self._a = np.array([c | 1 for c in consts[:k]], dtype=np.uint64)  # odd multipliers
        self._b = np.array(consts[k : 2 * k], dtype=np.uint64)
        at = 2 * k
        self._position = np.array([c | 1 for c in consts[at : at + ngram]], dtype=np.uint64)
        at += ngram
        self._row = np.array([c | 1 for c in consts[at : at + rows]], dtype=np.uint64)
        at += rows
        self._band = np.array(consts[at : at + bands], dtype=np.uint64)
        base = consts[at + bands] | 1  # odd, so invertible modulo 2^64
        self._base, self._base_inv = base, pow(base, -1, 1 << 64)
        self._pow = np.ones(1, dtype=np.uint64)  # base^i, grown on demand
        self._pow_inv = np.ones(1, dtype=np.uint64)  # base^-i

    @classmethod
    def from_config(cls, cfg: MinHashStep) -> MinHasher:
        return cls(ngram=cfg.ngram, bands=cfg.bands, rows=cfg.rows, seed=cfg.seed)

    # -- phase 1: signatures ----------------------------------------------------------------------

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), bands x rows]`` uint32 MinHash signatures; a text without words gets all
        0xFFFFFFFF (see :func:`has_shingles`)."""
        out = np.empty((len(texts), self.num_hashes), dtype=np.uint32)
        start = chars = 0
        for i, text in enumerate(texts):  # batches of about batch_chars characters bound the memory
            chars += len(text)
            if chars >= self.batch_chars:
                out[start : i + 1] = self._batch(texts[start : i + 1])
                start, chars = i + 1, 0
        if start < len(texts):
            out[start:] = self._batch(texts[start:])
        return out

    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._pow) < n:
            size = max(n, 2 * len(self._pow))
            self._pow = np.ones(size, dtype=np.uint64)
            self._pow_inv = np.ones(size, dtype=np.uint64)
            np.cumprod(np.full(size - 1, self._base, dtype=np.uint64), out=self._pow[1:])
            np.cumprod(np.full(size - 1, self._base_inv, dtype=np.uint64), out=self._pow_inv[1:])
        return self._pow[:n], self._pow_inv[:n]

    def _word_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every word of every text, in order, and the number of words of each text."""
        lowered = [t.lower() for t in texts]
        joined = "\n".join(lowered)  # "\n" is not a word character, so no word crosses two texts
        cps = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        is_word = _word_chars()[cps & 0xFFFF] & (cps < 0x10000)
        edges = np.diff(is_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # [start, end) per word
        # Word hash = sum_i cp_i * base^(i - start): one prefix sum of cp_i * base^i over the batch, the
        # difference at each word's ends, shifted back by base^-start. All modulo 2^64 (uint64 wraps).
        pw, pw_inv = self._powers(len(cps) + 1)
        prefix = np.zeros(len(cps) + 1, dtype=np.uint64)
        np.cumsum(cps.astype(np.uint64) * pw[: len(cps)], out=prefix[1:])
        hashes = _mix((prefix[ends] - prefix[starts]) * pw_inv[starts])
        text_starts = np.zeros(len(lowered), dtype=np.int64)
        np.cumsum([len(t) + 1 for t in lowered[:-1]], out=text_starts[1:])
        counts = np.bincount(np.searchsorted(text_starts, starts, side="right") - 1, minlength=len(texts))
        return hashes, counts

    def _shingles(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hashes (as uint64) of every shingle of every text, in order, and the count per text."""
        n = self.ngram
        word_hash, counts = self._word_hashes(texts)
        per_text = np.where(counts > 0, np.maximum(counts - n + 1, 1), 0)
        text_of = np.repeat(np.arange(len(texts)), per_text)  # the text of each shingle
        first_word = np.cumsum(counts) - counts
        first_shingle = np.cumsum(per_text) - per_text
        begin = first_word[text_of] + (np.arange(len(text_of)) - first_shingle[text_of])  # its first word
        stop = (first_word + counts)[text_of]  # one past its text's last word
        acc = np.zeros(len(begin), dtype=np.uint64)
        for k in range(n):
            idx = begin + k
            inside = idx < stop  # a text shorter than n words has one shorter shingle
            term = word_hash[np.minimum(idx, len(word_hash) - 1)] * self._position[k]
            acc += term if inside.all() else np.where(inside, term, np.uint64(0))
        return _mix(acc) >> np.uint64(32), per_text

    def _batch(self, texts: Sequence[str]) -> np.ndarray:
        shingles, per_text = self._shingles(texts)
        k = self.num_hashes
        minima = np.full((k, len(texts)), np.iinfo(np.uint64).max, dtype=np.uint64)
        has = np.flatnonzero(per_text)
        seg_start = (np.cumsum(per_text) - per_text)[has]  # each text's first shingle
        block = np.empty((k, min(_CHUNK, len(shingles))), dtype=np.uint64)
        # a_k * x + b_k for every hash k and shingle x, in [K, _CHUNK] blocks that bound the temporary
        # memory; then the minimum over each text's columns (a text cut by a block edge keeps the
        # smaller of its two minima).
        for c0 in range(0, len(shingles), _CHUNK):
            x = shingles[c0 : c0 + _CHUNK]
            y = block[:, : len(x)]
            np.multiply(self._a[:, None], x[None, :], out=y)
            y += self._b[:, None]
            lo = np.searchsorted(seg_start, c0, side="right") - 1
            hi = np.searchsorted(seg_start, c0 + len(x), side="left")
            local = np.maximum(seg_start[lo:hi], c0) - c0
            cols = has[lo:hi]
            minima[:, cols] = np.minimum(minima[:, cols], np.minimum.reduceat(y, local, axis=1))
        return np.ascontiguousarray((minima >> np.uint64(32)).astype(np.uint32).T)

    # -- phase 1b: bucket keys --------------------------------------------------------------------

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """``[docs, bands]`` uint64 bucket keys: band i of two documents is equal exactly when their keys
        are (up to 64-bit hash collisions)."""
        d = len(signatures)
        bands = signatures.reshape(d, self.bands, self.rows).astype(np.uint64)
        keys = (bands * self._row).sum(axis=2, dtype=np.uint64) + self._band
        return _mix(keys)


def has_shingles(signatures: np.ndarray) -> np.ndarray:
    """Which signatures belong to texts with at least one word (the others are all 0xFFFFFFFF)."""
    return ~np.all(signatures == _EMPTY, axis=1)


class Buckets:
    """Phase 2: every shard's bucket keys, merged into candidate pairs, one band at a time.

    Shards are added in corpus order, so a document's global index is its shard's offset plus its
    position; a document without words is in no bucket. Each band's keys go to a file of their own
    (8 bytes per document that has words, with its global index beside it, 8 more), so memory does not
    grow with the corpus while shards are added; :meth:`pairs` then reads and sorts one band at a time
    (about 40 bytes per document while it does). ``directory``: where the band files go (None: a
    temporary folder); they are deleted by :meth:`close` or when ``pairs`` has read them.
    """

    def __init__(self, directory: Path | None = None) -> None:
        import tempfile

        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self._dir = tempfile.TemporaryDirectory(dir=directory, prefix="lsh-buckets-")
        self._files: list[tuple[IO[bytes], IO[bytes]]] = []  # per band: keys, document indices
        self.n_docs = 0

    def add(self, keys: np.ndarray, present: np.ndarray | None = None) -> int:
        """Add one shard's ``[docs, bands]`` keys (``present``: which documents have shingles, default
        all); returns the global index of the shard's first document."""
        first = self.n_docs
        self.n_docs += len(keys)
        docs = np.arange(first, self.n_docs, dtype=np.int64)
        if present is not None:
            keys, docs = keys[present], docs[present]
        if not self._files:
            root = Path(self._dir.name)
            self._files = [(open(root / f"band{b}.keys", "wb"), open(root / f"band{b}.docs", "wb"))
                           for b in range(keys.shape[1])]
        if keys.shape[1] != len(self._files):
            raise ValueError(f"a shard has {keys.shape[1]} bands, the earlier ones {len(self._files)}")
        doc_bytes = docs.tobytes()
        for b, (kf, df) in enumerate(self._files):
            kf.write(np.ascontiguousarray(keys[:, b], dtype=np.uint64).tobytes())
            df.write(doc_bytes)
        return first

    def pairs(self) -> np.ndarray:
        """``[pairs, 2]`` int64 (earlier, later) global indices of documents sharing a bucket: each
        document paired with the first document of every bucket it shares, without repeats. Reads the
        band files (and then deletes them)."""
        found = []
        try:
            for kf, df in self._files:
                kf.close()
                df.close()
                keys = np.fromfile(kf.name, dtype=np.uint64)
                docs = np.fromfile(df.name, dtype=np.int64)
                found.append(_band_pairs(keys, docs))
        finally:
            self.close()
        if not found:
            return np.empty((0, 2), dtype=np.int64)
        return np.unique(np.concatenate(found), axis=0)

    def close(self) -> None:
        """Delete the band files."""
        for kf, df in self._files:
            kf.close()
            df.close()
        self._files = []
        self._dir.cleanup()


def _band_pairs(keys: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """(head, member) pairs of one band: every document paired with the first document of its bucket.
    Documents come in index order and the sort is stable, so a bucket's first entry is its earliest."""
    order = np.argsort(keys, kind="stable")
    keys, docs = keys[order], docs[order]
    opens = np.ones(len(keys), dtype=bool)
    opens[1:] = keys[1:] != keys[:-1]
    head = docs[np.maximum.accumulate(np.where(opens, np.arange(len(keys)), 0))]
    pairs = np.stack([head[~opens], docs[~opens]], axis=1)
    return pairs[pairs[:, 0] != pairs[:, 1]]


def clusters(pairs: np.ndarray, n_docs: int) -> np.ndarray:
    """Phase 3: ``[n_docs]`` int64, for each document the first document (by index) of its cluster, the
    one that is kept; a document is a near duplicate where the value is not its own index.

    Union-find over the pairs, with the smaller index always the root, so the root is the cluster's
    first document. Only documents in some pair enter the forest.
    """
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while (up := parent.get(root, root)) != root:
            root = up
        while x != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in pairs.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.arange(n_docs, dtype=np.int64)
    for x in parent:
        roots[x] = find(x)
    return roots
