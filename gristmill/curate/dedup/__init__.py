"""Deduplication: exact (hash of the text) and fuzzy (MinHash with LSH)."""
