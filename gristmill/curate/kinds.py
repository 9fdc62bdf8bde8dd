"""Default curation steps and thresholds for each kind of text (``prepare.kind``).

Published thresholds were chosen for web pages: Gopher's 50-word floor drops every quote and verse,
C4's rule that a line must end a sentence strips verse to nothing, and Gopher's repeated-line rule drops
every play (each speech opens with the speaker's name). A recipe names the kind of text it has and gets
steps and thresholds that fit it; keys it sets itself always win. Plain data (no pydantic, no numpy): the
config reads it, ``gristmill keys`` prints it, tests check that every kind keeps the data it is for.
"""

from __future__ import annotations

from typing import Any

Kind = str

CLEAN = ["normalize_unicode", "clean_whitespace"]

STEPS: dict[Kind, list[str]] = {
    # The original default: cleaning, a length floor, exact duplicates.
    "general": ["strip_gutenberg", *CLEAN, "length", "dedup"],
    # FineWeb's order: language first, then Gopher repetition and quality, C4, FineWeb's own rules; PII
    # and deduplication last, on what is left.
    "web": [*CLEAN, "language", "gopher_repetition", "gopher_quality", "c4", "fineweb", "pii", "dedup",
            "minhash", "decontaminate"],
    # Books and plays: Gutenberg boilerplate out, prose rules with room for verse and dialogue.
    "books": ["strip_gutenberg", *CLEAN, "length", "language", "gopher_quality", "gopher_repetition", "pii", "dedup",
              "minhash", "decontaminate"],
    # Encyclopedia articles: prose with headings and short lists.
    "encyclopedia": [*CLEAN, "length", "gopher_quality", "gopher_repetition", "fineweb", "pii", "dedup",
                     "minhash", "decontaminate"],
    # Quotes, verses, proverbs, fortunes, messages: no prose rules, only duplicates and emptiness.
    "short": [*CLEAN, "length", "pii", "dedup", "minhash", "decontaminate"],
}
"""The steps of each kind, in order (the split always follows)."""

SETTINGS: dict[Kind, dict[str, dict[str, Any]]] = {
    "general": {},
    "web": {
        "length": {"min_chars": 200, "min_words": 20},
        # FineWeb keeps lines that do not end a sentence (menus are handled by its own rules).
        "c4": {"terminal_punct": False},
    },
    "books": {
        "length": {"min_chars": 1000, "min_words": 150},
        # A novel has far more than 100,000 words; verse has short words, many lines without stop words.
        "gopher_quality": {"max_words": 10_000_000, "min_mean_word_length": 2.5},
        # Speakers' names and refrains repeat as lines; what must not repeat is whole passages.
        "gopher_repetition": {"max_dup_line_fraction": 1.0, "max_dup_line_chars": 1.0,
                              "max_dup_para_fraction": 0.5, "max_dup_para_chars": 0.5},
    },
    "encyclopedia": {
        "length": {"min_chars": 200, "min_words": 30},
        "gopher_quality": {"min_words": 30},
    },
    "short": {
        "length": {"min_chars": 1, "min_words": 1},
        # Two different quotes rarely share 5-word runs; copies with a changed word or two do.
        "minhash": {"ngram": 3},
    },
}
"""Keys each kind sets on its steps (and on the same steps when a recipe lists them itself)."""

KINDS = tuple(STEPS)


def describe() -> str:
    """One line per kind: its steps and the keys it changes (for the ``kind`` field's documentation)."""
    lines = []
    for kind in KINDS:
        changed = "; ".join(f"{t}: " + ", ".join(f"{k} {v}" for k, v in keys.items())
                            for t, keys in SETTINGS[kind].items())
        lines.append(f"``{kind}``: {', '.join(STEPS[kind])}" + (f" ({changed})" if changed else ""))
    return ". ".join(lines)
