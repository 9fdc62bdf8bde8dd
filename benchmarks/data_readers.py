"""Documents per second of every collect reader, and HTML pages per second of WARC extraction, through the
real collect stage (reader -> mix -> Parquet shards) with 1 and 2 workers, side by side.

    .venv/bin/python benchmarks/data_readers.py                 # WARC corpus >= 100 MB, others 20 MB
    .venv/bin/python benchmarks/data_readers.py --warc-mb 30 --mb 5 --readers warc text

Corpora are the shipped samples repeated until they reach the size asked for, written to a temporary
folder: pywb's sample web archives (gzip WARCs, concatenated; most of their bytes are fonts, images and
scripts the reader skips, and one HTML page in 22 is a 655 KB table), Shakespeare's plays (as text files,
and cut into paragraphs for JSONL, gzip/zstd JSONL, CSV, Parquet and a saved Hugging Face dataset),
Debian's fortune files (``%``-delimited) and gensim's Wikipedia dump sample. Each corpus is split into
several files so that the work splits into input shards (one per file).

Figures: wall-clock documents/s for the whole stage (worker start-up included), and per core: documents
(or pages) per second of busy worker time, the sum of the input shards' times. The 2-worker column is a
ratio to 1 worker. On a machine shared with other work the wall clock is noisy; per-core rates are steadier.
Target for WARC: >= 1,000 HTML pages/s per core and 2 workers >= 1.7x one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

TARGET_PAGES_PER_CORE = 1000.0
TARGET_SCALING = 1.7
FORTUNES = Path("/usr/share/games/fortunes")
WIKI = "pkg://gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
PLAYS = "pkg://shksprdata/texts/*_gut.txt"
READERS = ("warc", "warc-plain", "text", "fortunes", "jsonl", "jsonl.gz", "jsonl.zst", "csv", "parquet", "mediawiki",
           "huggingface")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warc-mb", type=float, default=100.0, help="WARC corpus size in MB (on disk)")
    ap.add_argument("--mb", type=float, default=20.0, help="size of every other corpus in MB (on disk)")
    ap.add_argument("--files", type=int, default=8, help="files per corpus (one input shard each)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--readers", nargs="+", default=list(READERS), choices=READERS)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    return ap.parse_args()


# -- corpora -------------------------------------------------------------------------------------------------


def repeat_into(folder: Path, unit: bytes, name: str, mb: float, n_files: int) -> None:
    """``n_files`` files of ``unit`` repeated, ``mb`` MB in all (concatenated gzip members stay valid)."""
    folder.mkdir(parents=True)
    copies = max(1, round(mb * 1e6 / len(unit) / n_files))
    for i in range(n_files):
        with open(folder / name.format(i=i), "wb") as f:
            for _ in range(copies):
                f.write(unit)


def pywb_warcs() -> list[Path]:
    dist = metadata.distribution("pywb")
    return sorted(Path(str(f.locate())) for f in dist.files or ()
                  if "sample_archive/warcs/" in str(f) and str(f).endswith(".warc.gz"))


def paragraphs() -> list[str]:
    from gristmill.core.paths import expand

    out = []
    for p in expand(PLAYS):
        out += [q.strip() for q in p.read_text(encoding="utf-8").split("\n\n") if len(q.strip()) > 40]
    return out


def build(reader: str, root: Path, mb: float, n_files: int) -> dict[str, Any]:
    """Write the corpus for ``reader``; returns its collect source."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / reader
    if reader.startswith("warc"):
        repeat_into(folder, b"".join(p.read_bytes() for p in pywb_warcs()), "corpus-{i:02d}.warc.gz", mb, n_files)
        return {"name": reader, "type": "warc", "path": str(folder), "main_content": reader == "warc"}
    if reader == "text":
        from gristmill.core.paths import expand

        plays = expand(PLAYS)
        unit = sum(p.stat().st_size for p in plays)
        folder.mkdir(parents=True)
        for c in range(max(1, round(mb * 1e6 / unit))):
            for p in plays:
                shutil.copyfile(p, folder / f"{p.stem}-{c:03d}.txt")
        return {"name": reader, "path": str(folder)}
    if reader == "fortunes":
        texts = [p for p in FORTUNES.iterdir() if p.suffix != ".dat" and not p.is_symlink()]
        repeat_into(folder, b"".join(p.read_bytes() for p in texts), "fortunes-{i:02d}", mb, n_files)
        return {"name": reader, "path": str(folder), "delimiter": "%"}
    if reader == "mediawiki":
        from gristmill.core.paths import expand

        dump = expand(WIKI)[0]
        folder.mkdir(parents=True)
        for c in range(max(1, round(mb * 1e6 / dump.stat().st_size))):
            shutil.copyfile(dump, folder / f"dump-{c:03d}.xml.bz2")
        return {"name": reader, "type": "mediawiki", "path": str(folder)}
    paras = paragraphs()
    rows = [{"text": t, "n": i} for i, t in enumerate(paras)]
    if reader.startswith("jsonl"):
        unit = "".join(json.dumps(r) + "\n" for r in rows).encode()
        if reader == "jsonl.gz":
            import gzip

            unit = gzip.compress(unit)
        elif reader == "jsonl.zst":
            unit = pa.compress(unit, "zstd", asbytes=True)  # a frame per copy: concatenated frames are valid
        repeat_into(folder, unit, "part-{i:02d}." + reader, mb, n_files)
        return {"name": reader.replace(".", "-"), "path": str(folder), "metadata_fields": ["n"]}
    if reader == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["text", "n"])
        w.writerows([r["text"], r["n"]] for r in rows)
        header, _, body = buf.getvalue().encode().partition(b"\n")
        folder.mkdir(parents=True)
        copies = max(1, round(mb * 1e6 / len(body) / n_files))
        for i in range(n_files):
            (folder / f"part-{i:02d}.csv").write_bytes(header + b"\n" + body * copies)
        return {"name": reader, "path": str(folder), "metadata_fields": ["n"]}
    table = pa.table({"text": [r["text"] for r in rows], "n": [r["n"] for r in rows]})
    if reader == "parquet":
        folder.mkdir(parents=True)
        copies = max(1, round(mb * 1e6 / table.nbytes / n_files))
        for i in range(n_files):
            pq.write_table(pa.concat_tables([table] * copies), folder / f"part-{i:02d}.parquet", compression="zstd")
        return {"name": reader, "path": str(folder), "metadata_fields": ["n"]}
    import datasets

    datasets.disable_progress_bars()
    copies = max(1, round(mb * 1e6 / table.nbytes))
    ds = datasets.Dataset(pa.concat_tables([table] * copies))
    ds.save_to_disk(str(folder), num_shards=n_files)
    return {"name": reader, "type": "huggingface", "path": str(folder), "metadata_fields": ["n"]}


# -- timing --------------------------------------------------------------------------------------------------


def run(source: dict[str, Any], workers: int, out: Path, shard_mb: float) -> dict[str, float]:
    from gristmill.core.workspace import StageContext
    from gristmill.data.config import CollectConfig
    from gristmill.formats import shards
    from gristmill.stages.collect import run as run_collect

    if out.exists():
        shutil.rmtree(out)
    ctx = StageContext(run_dir=out, stage="collect", seed=1, log=lambda m: None)
    ctx.out_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    stats = run_collect(ctx, CollectConfig(sources=[source], workers=workers, input_shard_mb=shard_mb))
    wall = time.perf_counter() - t0
    busy = sum(shards.read_marker(ctx.out_dir, i)["seconds"] for i in range(stats["shards"]))
    s = stats["sources"][source["name"]]
    q = s.get("quarantined", {})
    pages = s["documents"] + q.get("empty", 0) + q.get("extraction_failed", 0)
    return {"wall": wall, "busy": busy, "documents": s["documents"], "pages": pages,
            "input_mb": s["input_bytes"] / 1e6, "shards": stats["shards"], "executor": stats["executor"]}


def main() -> None:
    args = parse_args()
    print(f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f} (other work on the machine "
          f"slows the wall clock)")
    results: dict[str, dict[int, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="gristmill-readers-bench-") as tmp:
        root = Path(tmp)
        for reader in args.readers:
            if reader == "fortunes" and not (FORTUNES / "fortunes").is_file():
                print(f"{reader}: skipped (apt-get install fortunes fortunes-min)")
                continue
            if reader == "huggingface":
                try:
                    import datasets  # noqa: F401
                except ImportError:
                    print(f"{reader}: skipped (pip install 'gristmill[hub]')")
                    continue
            mb = args.warc_mb if reader.startswith("warc") else args.mb
            source = build(reader, root / "corpora", mb, args.files)
            results[reader] = {}
            for workers in args.workers:
                r = run(source, workers, root / "out", max(mb / args.files, 0.001))
                results[reader][workers] = r
                unit = "pages" if reader.startswith("warc") else "documents"
                n = r["pages"] if reader.startswith("warc") else r["documents"]
                line = (f"{reader:12s} {workers} worker(s) [{r['executor']}]: {n:,} {unit} from {r['input_mb']:.0f} MB "
                        f"in {r['shards']} shards, {r['wall']:.2f} s = {n / r['wall']:,.0f} {unit}/s "
                        f"({r['input_mb'] / r['wall']:.0f} MB/s), {n / r['busy']:,.0f} {unit}/s per core")
                if 1 in results[reader] and workers != 1:
                    line += f"; {results[reader][1]['wall'] / r['wall']:.2f}x one worker"
                print(line, flush=True)
    if "warc" in results or "warc-plain" in results:
        print("\nWARC target: >= 1,000 HTML pages/s per core, 2 workers >= 1.7x one")
        for reader in ("warc", "warc-plain"):
            if reader not in results:
                continue
            per_core = max(r["pages"] / r["busy"] for r in results[reader].values())
            scaling = (results[reader][1]["wall"] / results[reader][2]["wall"]
                       if {1, 2} <= set(results[reader]) else float("nan"))
            print(f"  {reader:10s} ({'main content' if reader == 'warc' else 'main_content: false'}): "
                  f"{per_core:,.0f} pages/s per core [{'met' if per_core >= TARGET_PAGES_PER_CORE else 'NOT met'}], "
                  f"2 workers {scaling:.2f}x [{'met' if scaling >= TARGET_SCALING else 'NOT met'}]")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
