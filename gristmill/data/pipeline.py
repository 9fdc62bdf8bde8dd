"""One collect unit of work: a source's input shard through its reader and the mix into the store.

``reader -> sample (weight) -> limit -> provenance (content hash) -> documents shard``, with every drop
into the quarantine shard. :func:`collect_shard` is what a worker runs (see ``data/executor``); it knows
nothing of stages or runs, only the paths and config it is handed.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gristmill.data.config import SourceBase
from gristmill.data.executor.base import Report
from gristmill.data.step import StepStats
from gristmill.formats.document import Document, Provenance

DOCUMENTS = "documents"
QUARANTINE = "quarantine"
SPLITS = (DOCUMENTS, QUARANTINE)


@dataclass
class CollectShard:
    """What a worker needs to collect one input shard (picklable)."""

    out_dir: str
    index: int
    source: SourceBase
    seed: int
    files: list[str] = field(default_factory=list)
    root: str | None = None
    """The folder file ids are relative to (files sources)."""
    problems: list[tuple[str, str, str]] = field(default_factory=list)
    """Entries of the source's path that are not readable files: (path, reason, detail)."""
    state_dir: str | None = None
    """A crawl's state folder."""
    location: Any = None
    """A huggingface source's resolved location (``readers.hub.HubLocation``)."""


def make_reader(spec: CollectShard) -> Any:
    """The reader step for a source type (its module imported only here)."""
    source, files = spec.source, [Path(f) for f in spec.files]
    if source.type == "files":
        from gristmill.data.readers.files import FilesReader

        return FilesReader(source, files, Path(spec.root or "."))
    if source.type == "mediawiki":
        from gristmill.data.readers.mediawiki import MediaWikiReader

        return MediaWikiReader(source, files)
    if source.type == "warc":
        from gristmill.data.readers.warc import WarcReader

        return WarcReader(source, files)
    if source.type == "crawl":
        from gristmill.data.readers.crawler import Crawler, discard_stale_state

        discard_stale_state(source, Path(spec.state_dir))
        return Crawler(source, Path(spec.state_dir))
    if source.type == "huggingface":
        from gristmill.data.readers.hub import HubReader

        return HubReader(source, spec.location)
    raise ValueError(f"source '{source.name}' has unknown type '{source.type}'")


def keep_share(seed: int, doc_id: str, weight: float) -> bool:
    """Whether a document is in a source's sample: a uniform number from the seed and its id, below the
    weight (so raising the weight only ever adds documents)."""
    if weight >= 1.0:
        return True
    u = int.from_bytes(hashlib.sha256(f"mix\x00{seed}\x00{doc_id}".encode()).digest()[:8], "big") / 2**64
    return u < weight


def sample(docs: Iterable[Document], weight: float, seed: int, stats: StepStats) -> Iterator[Document]:
    for doc in docs:
        if keep_share(seed, doc.id, weight):
            yield doc
        else:
            stub = Document(id=doc.id, text="", source=doc.source, provenance=doc.provenance)
            stub.meta["detail"] = f"not in the source's sample (weight {weight})"
            stats.drop(stub, "not_sampled")


def _problem_stub(source: SourceBase, path: str, detail: str) -> Document:
    from gristmill.data.readers.files import document_id

    doc = Document(id=document_id(source.name, path, None), text="", source=source.name,
                   provenance=Provenance(uri=path, reader=source.type, license=source.license))
    doc.meta["detail"] = detail
    return doc


def collect_shard(spec: CollectShard, report: Report) -> dict[str, Any]:
    """Read one input shard into ``documents/<index>.parquet`` and ``quarantine/<index>.parquet``;
    returns its stats (documents, bytes, characters, licences, quarantine reasons, files)."""
    from gristmill.data.writers.parquet import DocumentWriter, QuarantineShardWriter

    out = Path(spec.out_dir)
    source = spec.source
    writer = DocumentWriter(out / DOCUMENTS, spec.index)
    quarantine = QuarantineShardWriter(out / QUARANTINE, spec.index)
    reader = make_reader(spec)
    stats = StepStats(name=reader.name, quarantine=quarantine)
    mix = StepStats(name="mix", quarantine=quarantine)
    chars = 0
    licenses: dict[str, dict[str, int]] = {}
    try:
        for path, reason, detail in spec.problems:
            stats.drop(_problem_stub(source, path, detail), reason)
        with closing(reader.run([], stats)) as docs:
            for doc in sample(docs, source.weight, spec.seed, mix):
                data = doc.text.encode("utf-8")
                doc.provenance.sha256 = hashlib.sha256(data).hexdigest()
                writer.write(doc, len(data))
                chars += len(doc.text)
                lic = licenses.setdefault(doc.provenance.license or "unknown", {"documents": 0, "bytes": 0})
                lic["documents"] += 1
                lic["bytes"] += len(data)
                report(1, len(data))
                if source.limit is not None and writer.documents >= source.limit:
                    break
        writer.close()
        quarantine.close()
    except BaseException:
        writer.abort()
        quarantine.abort()
        raise
    dropped = Counter(stats.dropped) + Counter(mix.dropped)
    out_stats: dict[str, Any] = {
        "source": source.name, "type": source.type,
        "files": len(spec.files), "files_read": getattr(reader, "files_read", 0),
        "input_bytes": getattr(reader, "bytes_read", 0) or sum(_size(f) for f in spec.files),
        "documents": writer.documents, "bytes": writer.text_bytes, "characters": chars,
        "quarantined": dict(sorted(dropped.items())), "licenses": dict(sorted(licenses.items())),
    }
    if hasattr(reader, "records"):
        out_stats["records"] = reader.records  # WARC records seen
    if hasattr(reader, "counts"):
        out_stats["crawl"] = dict(sorted(reader.counts.items()))
    return out_stats


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One source's stats from its input shards' stats."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, bool) or k in ("source", "type"):
                out[k] = v
            elif isinstance(v, int | float):
                out[k] = out.get(k, 0) + v
            elif isinstance(v, dict):
                out[k] = _merge_dicts(out.get(k, {}), v)
    for k in ("quarantined", "licenses", "crawl"):
        if k in out:
            out[k] = dict(sorted(out[k].items()))
    return out


def _merge_dicts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_dicts(out.get(k, {}), v) if isinstance(v, dict) else out.get(k, 0) + v
    return out


def shard_key(spec: CollectShard, version: str) -> str:
    """What decides an input shard's output: its source's config, its files (path, size, modification
    time), the seed where sampling uses it, and Gristmill's version."""
    files = []
    for f in spec.files:
        try:
            st = Path(f).stat()
            files.append([f, st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([f, None, None])
    loc = spec.location
    key = {"source": spec.source.model_dump(mode="json"), "files": files, "problems": spec.problems,
           "seed": spec.seed if spec.source.weight < 1 else None, "version": version,
           "location": [loc.kind, loc.target] if loc is not None else None}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

