"""collect: read raw sources (plain files, JSONL, MediaWiki dumps) into Documents with provenance.

``run_collect(ctx, cfg)`` writes ``documents.jsonl`` and ``quarantine.jsonl``; ``input_files(cfg)`` lists
the files it reads, for the runner's cache key.
"""

from gristmill.collect.config import CollectConfig, SourceConfig
from gristmill.collect.stage import input_files, run_collect

__all__ = ["CollectConfig", "SourceConfig", "input_files", "run_collect"]
