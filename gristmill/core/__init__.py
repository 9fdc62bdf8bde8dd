"""The foundation every other package builds on: typed configs, the run workspace (atomic writes,
hashes, manifests), the stage record, paths, JSONL and optional extras. Nothing here imports torch or
any other part of Gristmill but ``gristmill.errors``."""
