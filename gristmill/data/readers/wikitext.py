"""Wikitext to plain text: what a reader of the rendered article sees, without the markup.

The page is parsed with mwparserfromhell and its node tree rendered back as text: templates (infoboxes,
citations, navboxes), ``<ref>`` footnotes, tables, comments, media and category links and interlanguage
links are dropped; wikilinks and external links keep their visible text; headings become plain lines;
bold/italic quotes and list markers go. A few regexes then tidy what dropping leaves behind (empty
brackets, doubled spaces, runs of blank lines).
"""

from __future__ import annotations

import re

import mwparserfromhell
from mwparserfromhell.nodes import (
    Comment,
    ExternalLink,
    Heading,
    HTMLEntity,
    Tag,
    Text,
    Wikilink,
)
from mwparserfromhell.wikicode import Wikicode

DROP_LINK_NAMESPACES = frozenset({"file", "image", "media", "category"})
"""Link prefixes whose links render as media or page categories, not as text (English names; the dump's
own localised names are added from its siteinfo)."""

DROP_TAGS = frozenset({
    "ref", "references", "table", "gallery", "math", "chem", "ce", "timeline", "imagemap", "score",
    "graph", "templatedata", "mapframe", "maplink", "hiero", "inputbox", "categorytree", "noinclude",
    "indicator", "templatestyles",
})
"""Tags whose content is not running text: footnotes, tables, formulas, media, page machinery."""

EMPTY_TAGS = frozenset({"li", "dt", "dd", "hr", "img"})
"""List markers (``*``, ``#``, ``;``, ``:``) and rules: the tag itself renders as nothing."""

_LANGUAGE_PREFIX = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]+)*|simple")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_STYLE_QUOTES = re.compile(r"('{2,})(s\b)?")
_EMPTY_BRACKETS = re.compile(r"\(\s*(?:[,;:]\s*)*\)|\[\s*\]")
_SPACE_RUN = re.compile(r"[ \t\u00a0]{2,}")
_SPACE_BEFORE_PUNCT = re.compile(r"(?<=\w) +(?=[,.;:!?](?:\s|$))")
_LINE_EDGE_SPACE = re.compile(r"^[ \t]+|[ \t]+$", re.M)
_BLANK_LINES = re.compile(r"\n{3,}")


def wikitext_to_text(
    wikitext: str,
    drop_namespaces: frozenset[str] = DROP_LINK_NAMESPACES,
    skip_sections: frozenset[str] = frozenset(),
) -> str:
    """The plain text of a page.

    ``drop_namespaces``: lower-case link prefixes whose links are dropped whole. ``skip_sections``:
    lower-case headings whose sections (down to the next heading of the same or a higher level) are left
    out, e.g. ``references``. Raises ``mwparserfromhell.parser.ParserError`` on input the parser rejects.
    """
    code = mwparserfromhell.parse(wikitext, skip_style_tags=True)
    return _tidy(_render(code, drop_namespaces, skip_sections))


def _render(code: Wikicode | None, drop: frozenset[str], skip_sections: frozenset[str] = frozenset()) -> str:
    if code is None:
        return ""
    out: list[str] = []
    skipping_level: int | None = None  # heading level of the section being skipped
    for node in code.nodes:
        if isinstance(node, Heading) and (skip_sections or skipping_level is not None):
            if skipping_level is not None and node.level <= skipping_level:
                skipping_level = None
            if skipping_level is None and _render(node.title, drop).strip().lower() in skip_sections:
                skipping_level = node.level
        if skipping_level is not None:
            continue
        if isinstance(node, Text):
            out.append(node.value)
        elif isinstance(node, Wikilink):
            out.append(_render_wikilink(node, drop))
        elif isinstance(node, ExternalLink):
            # [http://x title] shows "title"; a bare http://x shows the URL; [http://x] shows a number.
            if node.brackets:
                out.append(_render(node.title, drop))
            else:
                out.append(str(node.url))
        elif isinstance(node, Heading):
            out.append(_render(node.title, drop).strip())
        elif isinstance(node, Tag):
            out.append(_render_tag(node, drop))
        elif isinstance(node, HTMLEntity):
            out.append(node.normalize())
        elif isinstance(node, Comment):
            continue
        # Template and Argument nodes ({{...}}, {{{...}}}) render as nothing.
    return "".join(out)


def _render_wikilink(link: Wikilink, drop: frozenset[str]) -> str:
    target = _render(link.title, drop).strip()  # rendered, so [[OS&nbsp;X]] shows a space, not "&nbsp;"
    if target.startswith(":"):  # [[:Category:X]] is an ordinary visible link to the category page
        target = target[1:]
    elif ":" in target:
        prefix = target.split(":", 1)[0].strip().lower()
        if prefix in drop:
            return ""
        if link.text is None and _LANGUAGE_PREFIX.fullmatch(prefix):
            return ""  # interlanguage link ([[de:Anarchismus]]): shown in the sidebar, not the text
    if link.text is not None:
        text = _render(link.text, drop)
        if text.strip():
            return text
    return target


def _render_tag(tag: Tag, drop: frozenset[str]) -> str:
    name = str(tag.tag).strip().lower()
    if name in DROP_TAGS:
        return ""
    if name == "br":
        return "\n"
    if name in EMPTY_TAGS or tag.self_closing:
        return ""
    return _render(tag.contents, drop)


def _style_quotes(m: re.Match[str]) -> str:
    # Two quotes open or close italic, three bold, five both. Four are an apostrophe and bold, and so are
    # three before a possessive s (''Iliad'''s is the italic title, then 's).
    quotes, s = m.group(1), m.group(2) or ""
    return "'" + s if len(quotes) == 4 or (len(quotes) == 3 and s) else s


def _tidy(text: str) -> str:
    text = _MAGIC_WORD.sub("", text)
    text = _STYLE_QUOTES.sub(_style_quotes, text)
    text = _EMPTY_BRACKETS.sub("", text)
    text = _SPACE_RUN.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub("", text)
    text = _LINE_EDGE_SPACE.sub("", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()
