"""Gristmill: from raw data to a deployed, evaluated generative model.

The stages live in modules named after them: collect, prepare, synth, tokenize, train, evaluate,
finetune, serve (plus export and report). ``gristmill.pipeline`` chains them; ``gristmill.cli`` is the
command line. Nothing runs at import time.
"""

__version__ = "0.1.0"
