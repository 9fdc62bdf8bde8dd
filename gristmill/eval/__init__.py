"""The evaluation library: language-model metrics (``lm``), tasks in lm-evaluation-harness's format and the
built-in ones (``tasks``, no torch), the scoring harness (``harness``), the lm-evaluation-harness adapter
(``lm_eval``, the ``eval`` extra), chat answers (``samples``) and the stage's config (``config``, no torch)."""
