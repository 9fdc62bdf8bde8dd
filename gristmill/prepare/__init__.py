"""prepare: normalise, clean, filter, deduplicate and split collect's documents.

``run_prepare(ctx, cfg)`` writes ``train.jsonl``, ``val.jsonl`` and ``dropped.jsonl``. The steps live in
:mod:`gristmill.prepare.steps`; :func:`build_steps` turns a :class:`PrepareConfig` into the step list.
"""

from gristmill.prepare.config import PrepareConfig
from gristmill.prepare.stage import build_steps, run_prepare

__all__ = ["PrepareConfig", "build_steps", "run_prepare"]
