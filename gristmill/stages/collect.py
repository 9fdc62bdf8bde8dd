"""collect: read every source into the document store (``documents/*.parquet``); what cannot be read, into
``quarantine/*.parquet`` with the reason.

Each source's files are grouped, in order, into input shards (``collect.input_shard_mb``); each input
shard is a unit of work run by the executor (``collect.executor``, ``collect.workers``) and becomes the
numbered shards ``documents/<n>.parquet`` and ``quarantine/<n>.parquet`` plus a completion marker
``done/<n>.json`` holding its key and stats. The stage keeps its folder between runs: an input shard whose
marker matches (same source config, same files, same sizes and times) is not read again. So a killed run
finishes only what is missing, and adding a source to a recipe collects only that source. A source that
yields no document is an error naming the source and the reasons its records were quarantined: a run
never trains on silence.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from gristmill import __version__
from gristmill.core.extras import check
from gristmill.core.paths import Scan, scan
from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext
from gristmill.data.config import RUNTIME_KEYS, CollectConfig, SourceBase
from gristmill.errors import ConfigError, InputError

READER_EXTRAS = {"mediawiki": (("mwparserfromhell", "wiki"),), "huggingface": (("datasets", "hub"),),
                 "warc": (("fastwarc", "web"), ("warcio", "web")), "crawl": ()}
"""Source type -> (module, extra) pairs it needs beyond the core install (the web extractor is added from
the source's ``extractor``)."""
LAYOUT = {"documents", "quarantine", "done", "crawl", "manifest.json"}
"""What the stage folder holds; anything else (an older layout's files) is removed when the stage runs."""
MB = 1_000_000


def source_scan(source: SourceBase) -> Scan:
    """The files a source names; an InputError naming the source if there are none."""
    try:
        return scan(source.path)
    except InputError as e:
        raise InputError(f"collect source '{source.name}': {e}; fix its path in the recipe") from None


def _hub_location(source: SourceBase) -> Any:
    from gristmill.data.readers.hub import locate

    return locate(source)


def input_files(cfg: CollectConfig) -> list[Path]:
    """Every local file the stage reads (hashed by the runner to decide whether collect must run again)."""
    seen: dict[Path, None] = {}
    for source in cfg.sources:
        if source.type == "crawl":
            continue
        if source.type == "huggingface":
            seen.update(dict.fromkeys(_hub_location(source).files))
        else:
            seen.update(dict.fromkeys(source_scan(source).files))
    return list(seen)


def check_config(cfg: CollectConfig, recipe: Any) -> None:
    if not cfg.sources:
        raise ConfigError("collect.sources is empty: add at least one source (name, type, path) to the recipe")
    for source in cfg.sources:
        feature = f"collect source '{source.name}' (type {source.type})"
        for module, extra in READER_EXTRAS.get(source.type, ()):
            check(module, extra, feature)
        if source.type in ("warc", "crawl"):
            check(source.extractor, "web", feature)
        if source.type == "huggingface":
            loc = _hub_location(source)
            if loc.kind == "hub":
                from gristmill.data.readers.hub import check_hub_reachable

                check_hub_reachable(source.name, loc.target)
    if cfg.executor == "ray":
        check("ray", "ray", "collect.executor: ray")


def _slug(name: str) -> str:
    import hashlib

    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "source"
    return slug if slug == name else f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def plan(ctx: StageContext, cfg: CollectConfig) -> list[Any]:
    """The input shards of every source, in order, as executor tasks. Resolves every path first, so a typo
    in the last source fails in a second, before anything is read."""
    from gristmill.data.executor import Task
    from gristmill.data.pipeline import CollectShard, shard_key

    out = str(ctx.out_dir.resolve())
    specs: list[tuple[CollectShard, int, str]] = []
    for source in cfg.sources:
        if source.type == "crawl":
            state = ctx.out_dir.resolve() / "crawl" / _slug(source.name)
            specs.append((CollectShard(out, 0, source, ctx.seed, state_dir=str(state)), 0,
                          f"crawl '{source.name}'"))
            continue
        if source.type == "huggingface":
            loc = _hub_location(source)
            specs.append((CollectShard(out, 0, source, ctx.seed, location=loc), sum(_size(p) for p in loc.files),
                          f"source '{source.name}' ({loc.kind} dataset)"))
            continue
        found = source_scan(source)
        root = None
        if source.type == "files":
            from gristmill.data.readers.files import location_root

            root = str(location_root(source.path))
        problems = [(str(p), reason, detail) for p, reason, detail in found.problems]
        groups: list[list[Path]] = [[]]
        size = 0
        for f in found.files:
            n = _size(f)
            if groups[-1] and source.limit is None and size + n > cfg.input_shard_mb * MB:
                groups.append([])
                size = 0
            groups[-1].append(f)
            size += n
        for i, group in enumerate(groups):
            spec = CollectShard(out, 0, source, ctx.seed, files=[str(f) for f in group], root=root,
                                problems=problems if i == 0 else [])
            label = f"source '{source.name}', {len(group)} file{'s' * (len(group) != 1)}"
            specs.append((spec, sum(_size(f) for f in group), label))
    tasks = []
    for index, (spec, nbytes, label) in enumerate(specs):
        spec.index = index
        tasks.append(Task(index=index, key=shard_key(spec, __version__), label=label, input_bytes=nbytes,
                          payload=spec))
    return tasks


def _tidy(out_dir: Path) -> None:
    for p in out_dir.iterdir() if out_dir.is_dir() else ():
        if p.name not in LAYOUT:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def run(ctx: StageContext, cfg: CollectConfig) -> dict[str, Any]:
    """Read all sources into the store. Returns per-source stats (documents, bytes, licences, reasons)."""
    from gristmill.data.executor import make_executor, run_tasks
    from gristmill.data.pipeline import SPLITS, collect_shard, merge_stats

    check_config(cfg, None)
    tasks = plan(ctx, cfg)
    _tidy(ctx.out_dir)
    executor = make_executor(cfg, tasks)
    markers = run_tasks(collect_shard, ctx.out_dir.resolve(), tasks, SPLITS, executor, ctx.log, "collect")
    parts: dict[str, list[dict[str, Any]]] = {s.name: [] for s in cfg.sources}
    seconds: dict[str, float] = dict.fromkeys(parts, 0.0)
    for marker in markers:
        parts[marker["stats"]["source"]].append(marker["stats"])
        seconds[marker["stats"]["source"]] += float(marker.get("seconds", 0.0))
    per_source: dict[str, dict[str, Any]] = {}
    for source in cfg.sources:
        s = merge_stats(parts[source.name])
        s.pop("source", None)
        s["shards"] = len(parts[source.name])
        s["seconds"] = round(seconds[source.name], 3)
        per_source[source.name] = s
        ctx.log(f"[collect] {source.name}: {_describe(s)}")
    for source in cfg.sources:
        s = per_source[source.name]
        if s.get("documents", 0) == 0:
            reasons = ", ".join(f"{r} {n}" for r, n in s.get("quarantined", {}).items()) or "no records"
            where = getattr(source, "path", None) or ", ".join(getattr(source, "seeds", []))
            raise InputError(f"collect source '{source.name}' ({where}) gave 0 documents (quarantined: "
                             f"{reasons}); check the source's type, path and file format")
    totals = merge_stats([{k: v for k, v in s.items() if k in ("documents", "bytes", "characters", "input_bytes",
                                                               "licenses")} for s in per_source.values()])
    return {
        "documents": totals.get("documents", 0),
        "quarantined": sum(sum(s.get("quarantined", {}).values()) for s in per_source.values()),
        "characters": totals.get("characters", 0),
        "bytes": totals.get("bytes", 0),
        "input_bytes": totals.get("input_bytes", 0),
        "licenses": totals.get("licenses", {}),
        "shards": len(tasks),
        "executor": executor.name,
        "sources": per_source,
    }


def _describe(s: dict[str, Any]) -> str:
    q = ", ".join(f"{reason} {n}" for reason, n in s.get("quarantined", {}).items()) or "none"
    return (f"{s.get('documents', 0):,} documents, {s.get('bytes', 0) / 1e6:.2f} MB of text from "
            f"{s.get('files_read', 0)} of {s.get('files', 0)} files in {s.get('shards', 0)} shard(s), "
            f"{s.get('seconds', 0.0):.1f}s; quarantined: {q}")


def report(rc: ReportContext) -> str:
    from gristmill.report.markdown import reason_table

    m = rc.manifests.get("collect")
    if not m:
        return ""
    rows = [[name, s.get("type"), s.get("files"), s.get("documents"), s.get("characters"),
             sum((s.get("quarantined") or {}).values()), s.get("quarantined")]
            for name, s in (m.get("stats", {}).get("sources") or {}).items()]
    return ("## Collect\n\nDocuments read from each source; records that could not be read are in "
            "`collect/quarantine/` with their reason (`gristmill show-docs RUN collect --split quarantine`)."
            "\n\n" + reason_table(["source", "type", "files", "documents", "characters", "quarantined", "reasons"],
                                  rows) + "\n")


STAGE = Stage(
    name="collect",
    config=CollectConfig,
    needs=(),
    run=run,
    help="read sources into documents with provenance",
    resumable=True,
    runtime_keys=RUNTIME_KEYS,
    external_inputs=input_files,
    check=check_config,
    report=report,
)
