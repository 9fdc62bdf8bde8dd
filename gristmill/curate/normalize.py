"""Text normalisers: Project Gutenberg boilerplate, Unicode normal form, whitespace and control characters.

Each is a :class:`~gristmill.data.step.TextMap`: it rewrites text and counts the documents it changed.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

from gristmill.core.config import Config
from gristmill.data.step import TextMap


class StripGutenbergStep(Config):
    """Cut Project Gutenberg licence headers and footers (the ``*** START OF ...`` / ``*** END OF ...``
    markers and the older ``*END*THE SMALL PRINT!`` form); texts without the markers are left alone."""

    type: Literal["strip_gutenberg"] = "strip_gutenberg"
    """``strip_gutenberg``."""


class NormalizeUnicodeStep(Config):
    """Unicode normalisation, so equal-looking text has equal code points."""

    type: Literal["normalize_unicode"] = "normalize_unicode"
    """``normalize_unicode``."""
    form: Literal["NFC", "NFKC"] = "NFC"
    """NFC composes accents only; NFKC also folds compatibility characters (ligatures, full-width forms,
    superscripts: "m²" becomes "m2")."""


class CleanWhitespaceStep(Config):
    """Normalise line breaks to \\n, remove control characters other than \\n and \\t, strip trailing
    spaces, collapse runs of blank lines into one, and strip the document."""

    type: Literal["clean_whitespace"] = "clean_whitespace"
    """``clean_whitespace``."""


# Project Gutenberg boilerplate. Modern texts frame the work with "*** START OF THE PROJECT GUTENBERG
# EBOOK X ***" ... "*** END OF THE PROJECT GUTENBERG EBOOK X ***" (often preceded by "End of the Project
# Gutenberg EBook of X"); 1990s etexts end their licence header with "*END*THE SMALL PRINT! ... *END*" and
# close with "End of [this] Project Gutenberg Etext of X".
_GUTENBERG_START = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*START OF (?:THE |THIS )?PROJECT GUTENBERG|\*END\*THE SMALL PRINT!).*$",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*END OF (?:THE |THIS )?PROJECT GUTENBERG"
    r"|End of (?:the |this )?Project Gutenberg|End of (?:the |this )?Etext of).*$",
    re.IGNORECASE | re.MULTILINE,
)


class StripGutenberg(TextMap):
    """Keep only the text between Project Gutenberg's start and end markers (either may be missing)."""

    name = "strip_gutenberg"

    def apply(self, text: str) -> str:
        start = _GUTENBERG_START.search(text)
        if start is not None:
            text = text[start.end():]
        end = _GUTENBERG_END.search(text)
        if end is not None:
            text = text[: end.start()]
        return text


class NormalizeUnicode(TextMap):
    """Unicode normalisation (NFC or NFKC), so equal-looking text has equal code points."""

    name = "normalize_unicode"

    def __init__(self, form: str):
        self.form = form

    def apply(self, text: str) -> str:
        if unicodedata.is_normalized(self.form, text):  # fast path: most text already is
            return text
        return unicodedata.normalize(self.form, text)


# C0 and C1 control characters except \t and \n. The line-break controls (\v, \f, \r, \x1c-\x1e, \x85)
# have been turned into \n before this runs.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_BLANK_RUN = re.compile(r"\n{3,}")


class CleanWhitespace(TextMap):
    """Line breaks to \\n, no control characters but \\n and \\t, no trailing spaces, at most one blank
    line in a row, nothing at either end. Leading indentation inside the text is kept (verse, code)."""

    name = "clean_whitespace"

    def apply(self, text: str) -> str:
        # splitlines knows every line boundary: \r\n, \r, \v, \f, \x1c-\x1e, \x85, \u2028, \u2029.
        text = "\n".join(text.splitlines())
        text = _CONTROL.sub("", text)
        text = _TRAILING_SPACE.sub("", text)
        text = _BLANK_RUN.sub("\n\n", text)
        return text.strip()
