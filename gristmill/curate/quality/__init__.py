"""Quality filters: each drops a document with the reason (and threshold) it failed."""
