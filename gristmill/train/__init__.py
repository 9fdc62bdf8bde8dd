"""The training library: configs (``config``, no torch), the loop (``loop``), optimisers (``optim``),
checkpoints, tracking, batch sources (``batches``) and chat examples for fine-tuning (``sft``). Stages
live in ``gristmill.stages``; this package imports nothing at import time."""
