"""Readers: each turns one source's files into documents, quarantining what it cannot read."""
