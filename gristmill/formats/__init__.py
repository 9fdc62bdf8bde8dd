"""Contracts between stages: the records and file formats one stage writes and another reads. No torch."""
