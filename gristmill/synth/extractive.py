"""Extractive generators: each turns one document into draft conversations whose answers come from its
text (a true continuation, an article's lead, a title, a speaker's name), never invented.

Each first checks that its question fits the document and otherwise calls ``tc.skip(reason)``: ``qa``
wants an encyclopedia article whose lead names its title, ``source`` a real title (a heading standing
alone on the first line, or the title of a whole file or article; not the first line of a quote, not the
name of a file of many quotes), ``speaker`` a play (speaker headings that recur), ``continue`` room for a
passage and its continuation. Passages and answers are cut at sentence, line or word boundaries, never
inside a word.

:data:`GENERATORS` maps each generator ``type`` to its function; the configs are in
:mod:`gristmill.synth.config`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator

from gristmill.formats.document import Document
from gristmill.synth.base import Draft, Generator, TaskContext

# ---------------------------------------------------------------------------------------------- text helpers

_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s|$)")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def cut_to_boundary(text: str, max_chars: int) -> str:
    """The longest prefix of ``text`` of at most ``max_chars`` characters that ends a sentence, else a line,
    else a word: never part of a word ("" when the first word alone is longer than ``max_chars``).

    Sentence and line ends count only in the second half of the window, so the piece is not much shorter
    than asked; a word end anywhere does, as the last resort.
    """
    if len(text) <= max_chars:
        return text.strip()
    # one character past the window, so that what follows a candidate end is known: a sentence end needs
    # a space after it, and a word ends only where a space follows
    probe = text[: max_chars + 1]
    floor = max_chars // 2
    ends = [m.end() for m in _SENTENCE_END.finditer(probe) if floor <= m.end() <= max_chars]
    if not ends:
        ends = [i for i in range(floor, max_chars + 1) if probe[i] == "\n"]
    if not ends:
        ends = [i for i in range(1, max_chars + 1) if probe[i].isspace() and not probe[i - 1].isspace()]
    return text[: ends[-1]].strip() if ends else ""


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in re.finditer("\n", text)]


def passage_at(text: str, start: int, tc: TaskContext, room: int = 0) -> tuple[str, int]:
    """A passage of random length starting at ``start`` (a non-blank character), cut at a boundary, that
    leaves at least ``room`` characters of the text after it; returns it and the offset where it ends."""
    want = tc.rng.randint(tc.gen.min_passage_chars, tc.gen.max_passage_chars)
    want = max(1, min(want, len(text) - start - room))
    passage = cut_to_boundary(text[start:], want)
    return passage, start + len(passage)


def passage_starts(text: str, tc: TaskContext, reserve: int) -> list[int]:
    """``tc.n`` distinct line starts (not the first line) with at least ``reserve`` characters after them."""
    starts = [s for s in line_starts(text)[1:] if s + reserve <= len(text) and not text[s].isspace()]
    return sorted(tc.rng.sample(starts, min(tc.n, len(starts))))


def heading(text: str) -> str | None:
    """The text's first line if it stands alone as a heading ("THE TRAGEDY OF CORIOLANUS", then a blank
    line): short, capitalised, not ending like a sentence or clause. The first line of a quote or verse
    runs on into the next line and is no title; a question standing alone is a joke's set-up."""
    first, _, rest = text.lstrip().partition("\n")
    first = first.strip()
    if rest.partition("\n")[0].strip() or not rest.strip():
        return None  # the next line goes on (or there is none): a first line of prose or verse
    if not (3 <= len(first) <= 80 and len(first.split()) <= 12 and first[0].isupper()):
        return None
    if first.endswith((".", ",", ";", ":", "-", "?", "!")) or not re.search(r"[A-Za-z]{3}", first):
        return None
    return first


def display_title(doc: Document, play_readers: Iterable[str]) -> str | None:
    """The title to ask about, or None when the document has none worth asking for.

    For documents of ``play_readers``: the heading standing alone on the text's first line (file names make
    poor titles); else the file's name, unless the document is one record of a file split at a delimiter,
    whose name names a collection ("fortunes/food"), not this work. For other readers:
    ``provenance.title``.
    """
    prov = doc.provenance
    if prov.reader in play_readers:
        found = heading(doc.text)
        if found is not None:
            return found
        if prov.record is not None:
            return None
    title = prov.title
    return title.strip() if title and title.strip() else None


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


# ------------------------------------------------------------------------------------------------ generators

CONTINUE_PROMPTS = ("Continue this text:", "Continue the passage below.", "What comes next in this text?")


def continue_text(doc: Document, tc: TaskContext) -> Iterator[Draft]:
    """A passage, then the text that truly follows it in the document, both cut at boundaries."""
    text = doc.text
    starts = passage_starts(text, tc, tc.gen.min_passage_chars + tc.gen.continue_chars)
    if not starts:
        tc.skip("too_short")
        return
    for start in starts:
        passage, end = passage_at(text, start, tc, room=tc.gen.continue_chars)
        answer = cut_to_boundary(text[end:].lstrip(), tc.gen.continue_chars)
        if passage and answer:
            yield Draft.single("continue", f"{tc.rng.choice(CONTINUE_PROMPTS)}\n\n{passage}", answer, doc,
                               grounded=True)


QA_PROMPTS = (
    "Tell me about {t}.",
    "What is {t}?",
    "What do you know about {t}?",
    "Give me a short overview of {t}.",
)


def _names_title(lead: str, title: str) -> bool:
    """Whether the lead mentions a word of the title (articles open by naming their subject; a list or a
    lead that starts mid-topic does not)."""
    words = [w for w in re.findall(r"\w+", title.lower()) if len(w) >= 3] or re.findall(r"\w+", title.lower())
    low = lead.lower()
    return any(re.search(rf"(?<!\w){re.escape(w)}", low) for w in words)


def encyclopedic_qa(doc: Document, tc: TaskContext) -> Iterator[Draft]:
    """For encyclopedia articles: a question about the title, answered with the article's lead sentences."""
    if doc.provenance.reader not in tc.cfg.encyclopedic_readers:
        tc.skip("not_an_article")
        return
    if not tc.title:
        tc.skip("no_title")
        return
    # the lead is the first real paragraph (a sentence, not a stray heading line)
    lead = next((p for p in paragraphs(doc.text) if len(p) >= 40 and _SENTENCE_END.search(p)), None)
    if lead is None:
        tc.skip("no_lead")
        return
    if not _names_title(lead, tc.title):
        tc.skip("lead_does_not_name_title")
        return
    answer = cut_to_boundary(lead, tc.gen.lead_chars)
    if answer:
        yield Draft.single("qa", tc.rng.choice(QA_PROMPTS).format(t=tc.title), answer, doc, grounded=True)


SOURCE_ANSWERS = ('This passage is from the {kind} "{title}".', 'It comes from "{title}".',
                  'That is a passage from "{title}".')
"""Whole-sentence answers (``answer: sentence``): a model tuned on bare titles learns to answer any
question with a name."""
SPEAKER_ANSWERS = ("{name} speaks these lines{where}.", "These lines are spoken by {name}{where}.",
                   "They are {name}'s lines{where}.")


def source_title(doc: Document, tc: TaskContext) -> Iterator[Draft]:
    """A passage from inside the document; the answer is the work's or article's title."""
    if not tc.title:
        tc.skip("no_title")
        return
    kind = "article" if doc.provenance.reader in tc.cfg.encyclopedic_readers else "work"
    starts = passage_starts(doc.text, tc, tc.gen.min_passage_chars)
    if not starts:
        tc.skip("too_short")
        return
    title = _norm(tc.title)
    for start in starts:
        passage, _ = passage_at(doc.text, start, tc)
        if not passage or title in _norm(passage):
            continue  # a passage that shows its own title asks nothing
        answer = (tc.title if tc.gen.answer == "bare"
                  else tc.rng.choice(SOURCE_ANSWERS).format(kind=kind, title=tc.title))
        yield Draft.single("source", f"Which {kind} is this passage from?\n\n{passage}", answer, doc)


# A speaker's name as plays print it: "FIRST CITIZEN." on its own line (modern editions), an indented
# "  Kent. I thought the King ..." with the speech on the same line (First Folio transcriptions), or
# "THESEUS" in capitals alone on a line after a blank one (some Gutenberg editions).
_NAME = r"[A-Z][A-Za-z'’]*(?:[ -][A-Z][A-Za-z'’]*){0,3}"
_NAME_LINE = re.compile(rf"^[ \t]*({_NAME})\.[ \t]*$")
_NAME_INLINE = re.compile(rf"^[ \t]+({_NAME})\.[ \t]+(\S.*)$")
_NAME_CAPS = re.compile(r"^[ \t]*([A-Z][A-Z'’]+(?:[ -][A-Z][A-Z'’]*){0,3})[ \t]*$")
NOT_SPEAKERS = frozenset(
    {
        "ACT",
        "Act",
        "Actus",
        "SCENE",
        "Scene",
        "Scena",
        "Scoena",
        "Enter",
        "Exit",
        "Exeunt",
        "Finis",
        "FINIS",
        "THE",
        "The",
    }
)


_ROMAN = re.compile(r"[IVXLCDM]+")
"""Roman numerals ("IX.") number sections and sonnets; no character is called that."""


def speeches(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) turns of a play: a name line, then the lines up to a blank line or the next name."""
    turns: list[tuple[str, str]] = []
    name: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if name is not None and lines:
            turns.append((name, "\n".join(lines)))

    blank = True
    for line in text.splitlines():
        head = _NAME_LINE.match(line) or _NAME_INLINE.match(line) or (_NAME_CAPS.match(line) if blank else None)
        blank = not line.strip()
        if blank or head:
            flush()
            name, lines = None, []
            if head and head.group(1).split()[0] not in NOT_SPEAKERS and not _ROMAN.fullmatch(head.group(1)):
                name = head.group(1)
                lines = [head.group(2).strip()] if head.re is _NAME_INLINE else []
        elif name is not None:
            lines.append(line.strip())
    flush()
    return turns


def play_speaker(doc: Document, tc: TaskContext) -> Iterator[Draft]:
    """For plays: a speech, and the character who speaks it (the name printed above it).

    Only speakers heard at least twice count, and a play needs two of them: a numbered list or a heading
    that looks like a name appears once, a play's cast comes back.
    """
    if doc.provenance.reader not in tc.cfg.play_readers:
        tc.skip("not_a_play")
        return
    turns = [(n, s) for n, s in speeches(doc.text) if len(s) >= tc.gen.min_speech_chars]
    heard = Counter(n for n, _ in turns)
    cast = {n for n, k in heard.items() if k >= 2}
    if len(cast) < 2:
        tc.skip("speakers_do_not_recur")
        return
    turns = [(n, s) for n, s in turns if n in cast]
    where = f" in {tc.title}" if tc.title else ""
    for name, speech in tc.rng.sample(turns, min(tc.n, len(turns))):
        speech = cut_to_boundary(speech, tc.gen.max_passage_chars)
        if not speech:
            continue
        answer = name if tc.gen.answer == "bare" else tc.rng.choice(SPEAKER_ANSWERS).format(name=name, where=where)
        yield Draft.single("speaker", f"Who speaks these lines{where}?\n\n{speech}", answer, doc)


GENERATORS: dict[str, Generator] = {
    "continue": continue_text,
    "qa": encyclopedic_qa,
    "source": source_title,
    "speaker": play_speaker,
}
"""Generator type -> function (an explicit table: nothing registers itself at import)."""
