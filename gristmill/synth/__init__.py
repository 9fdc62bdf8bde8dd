"""The synthetic-data library: generators (``extractive``) over a shared draft protocol (``base``), the
checks every draft must pass (``checks``) and the typed config (``config``). The stage that runs them is
``gristmill.stages.synth``."""
