"""Orchestration: the recipe (``recipe``), the cached, rank-aware runner (``runner``) and the key reference (``reference``)."""
