"""The evaluation library: language-model metrics (``lm``) and its config (``config``, no torch)."""
