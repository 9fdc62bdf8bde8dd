"""Generation, knowing nothing of HTTP: the one sampler (``sampling``), single-request streaming (``stream``) and
the continuous-batching engine (``engine``) that the server, ``gristmill chat`` and batch callers share."""
