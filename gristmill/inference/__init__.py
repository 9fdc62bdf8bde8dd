"""Generation, knowing nothing of HTTP: the one sampler (``sampling``) and single-request streaming (``stream``)."""
