"""HTML pages per second of the WARC reader (parse, decode, extract), with 1 and 2 worker processes.

    .venv/bin/python benchmarks/warc_extract.py            # >= 100 MB corpus, 1 and 2 workers
    .venv/bin/python benchmarks/warc_extract.py --mb 20 --extractor trafilatura
    .venv/bin/python benchmarks/warc_extract.py --modes plain   # resiliparse with main_content: false only

The corpus is pywb's sample web archives (``pip install --no-deps pywb==2.10.0``), the gzip WARCs among
them concatenated over and over (a multi-member gzip file stays a valid WARC) into ``--files`` files of
together at least ``--mb`` MB, written to a temporary folder. Most of their bytes are fonts, images and
scripts that the reader skips without extracting, as in a real crawl; the HTML pages range from 0.2 KB to
655 KB. A page counts when it reached the extractor (a document, or a drop as ``empty``). Workers split
the files (one process per file at a time, as the data engine's process pool does), so the 2-worker run
shows how the reader scales with cores. With resiliparse, both of the reader's modes are timed: main content
(``main_content: true``, the default) and every visible block but the page's frame (``main_content: false``).
Target: >= 1,000 pages/s per core.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections import Counter
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path

TARGET_PER_CORE = 1000.0


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=100.0, help="corpus size in MB (compressed, on disk)")
    ap.add_argument("--files", type=int, default=8, help="corpus files (the unit of work of a process)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="process counts to time")
    ap.add_argument("--extractor", choices=["resiliparse", "trafilatura"], default="resiliparse")
    ap.add_argument("--modes", default="main,plain",
                    help="resiliparse's modes to time, comma-separated: main (main_content: true, the default) "
                         "and plain (main_content: false)")
    return ap.parse_args()


def sample_warcs() -> list[Path]:
    try:
        dist = metadata.distribution("pywb")
    except metadata.PackageNotFoundError:
        raise SystemExit("pywb's sample archives are needed: pip install --no-deps pywb==2.10.0") from None
    files = sorted(Path(str(f.locate())) for f in dist.files or ()
                   if "sample_archive/warcs/" in str(f) and str(f).endswith(".warc.gz"))
    if not files:
        raise SystemExit("pywb is installed without its sample archives")
    return files


def build_corpus(folder: Path, mb: float, n_files: int) -> tuple[list[Path], int]:
    """Write ``n_files`` files that repeat the samples until they hold ``mb`` MB in all; returns the files
    and how many copies of the sample set each holds."""
    unit = b"".join(p.read_bytes() for p in sample_warcs())
    copies = max(1, int(mb * 1e6 / len(unit) / n_files + 0.999))
    paths = []
    for i in range(n_files):
        path = folder / f"corpus-{i:02d}.warc.gz"
        with open(path, "wb") as f:
            for _ in range(copies):
                f.write(unit)
        paths.append(path)
    return paths, copies


def read_file(args: tuple[str, str, bool]) -> tuple[Counter, int, float, int]:
    """Read one file with the real reader; returns (outcomes, documents, CPU seconds, peak RSS in KiB)."""
    from gristmill.data.readers.warc import WarcReader
    from gristmill.data.step import StepStats
    from gristmill.data.web_config import WarcSource

    path, extractor, main = args
    stats = StepStats("warc")
    reader = WarcReader(WarcSource(name="bench", path=path, extractor=extractor, main_content=main), [Path(path)])
    cpu = time.process_time()
    docs = sum(1 for _ in reader.run([], stats))
    cpu = time.process_time() - cpu
    return stats.dropped, docs, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def timed(files: list[Path], workers: int, extractor: str, main: bool) -> dict[str, float]:
    """Wall and CPU seconds, pages, records and peak worker RSS for reading every file with ``workers``
    processes."""
    jobs = [(str(p), extractor, main) for p in files]
    with get_context("spawn").Pool(workers) as pool:
        pool.map(read_file, jobs[:workers])  # warm-up: imports and first-touch, not timed
        t0 = time.perf_counter()
        results = pool.map(read_file, jobs, chunksize=1)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cpu": sum(r[2] for r in results),
            "pages": sum(docs + dropped["empty"] + dropped["extraction_failed"] for dropped, docs, *_ in results),
            "records": sum(docs + sum(dropped.values()) for dropped, docs, *_ in results),
            "rss_mb": max(r[3] for r in results) / 1024}


def extractor_alone(extractor: str, main: bool) -> float:
    """The peer: pages per CPU second of the extractor by itself on the same pages (decoded, in memory),
    the ceiling for any reader that extracts main content with it."""
    from fastwarc.warc import ArchiveIterator

    from gristmill.data.readers.warc import decode_text, parse_content_type

    pages = []
    for path in sample_warcs():
        for rec in ArchiveIterator(str(path)):
            if str(rec.record_type) == "response" and rec.is_http and rec.http_headers.status_code == 200:
                mime, charset = parse_content_type(rec.http_headers.get("Content-Type"))
                if mime == "text/html":
                    pages.append(decode_text(rec.reader.read(), charset, True))
    if extractor == "resiliparse":
        from resiliparse.extract.html2text import extract_plain_text

        from gristmill.data.readers.warc import BOILERPLATE_ELEMENTS

        def run(html: str) -> object:
            if main:
                return extract_plain_text(html, main_content=True)
            return extract_plain_text(html, main_content=False, skip_elements=BOILERPLATE_ELEMENTS)
    else:
        import trafilatura

        def run(html: str) -> object:
            return trafilatura.extract(html, include_comments=False)
    best = float("inf")
    for _ in range(3):
        cpu = time.process_time()
        for html in pages:
            run(html)
        best = min(best, time.process_time() - cpu)
    return len(pages) / best


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="gristmill-warc-bench-") as tmp:
        files, copies = build_corpus(Path(tmp), args.mb, args.files)
        total = sum(p.stat().st_size for p in files)
        print(f"corpus: {len(files)} files, {total / 1e6:.1f} MB ({copies} copies of pywb's gzip WARC samples "
              f"each); extractor {args.extractor}; {os.cpu_count()} CPUs")
        print(f"load average before: {os.getloadavg()[0]:.2f} (other work on the machine slows the wall clock; "
              f"the CPU-time rates are steadier)")
        modes = args.modes.split(",") if args.extractor == "resiliparse" else ["main"]
        for mode in modes:
            if mode not in ("main", "plain"):
                raise SystemExit(f"--modes: {mode!r} is not main or plain")
            main_content = mode == "main"
            print(f"\n{args.extractor}, main_content: {str(main_content).lower()}:")
            rates, per_cpu = {}, {}
            for workers in args.workers:
                r = timed(files, workers, args.extractor, main_content)
                rates[workers], per_cpu[workers] = r["pages"] / r["seconds"], r["pages"] / r["cpu"]
                per_core = rates[workers] / workers
                print(f"  {workers} worker(s): {r['pages']} HTML pages ({r['records']} records) in {r['seconds']:.2f} s "
                      f"= {rates[workers]:,.0f} pages/s ({total / 1e6 / r['seconds']:.0f} MB/s), "
                      f"{per_core:,.0f} pages/s per core by wall clock, {per_cpu[workers]:,.0f} per CPU second; "
                      f"peak worker RSS {r['rss_mb']:.0f} MB [target >= {TARGET_PER_CORE:,.0f} pages/s per core: "
                      f"{'met' if max(per_core, per_cpu[workers]) >= TARGET_PER_CORE else 'NOT met'}]")
            if 1 in rates and 2 in rates:
                print(f"  2 workers vs 1: {rates[2] / rates[1]:.2f}x (target >= 1.7x)")
            peer = extractor_alone(args.extractor, main_content)
            best = max(per_cpu.values())
            print(f"  peer: {args.extractor} alone on the same pages (decoded, in memory): {peer:,.0f} pages per "
                  f"CPU second; the reader reaches {best / peer:.0%} of it (the rest: inflating and skipping the "
                  f"other records, decoding, bookkeeping)")


if __name__ == "__main__":
    main()
