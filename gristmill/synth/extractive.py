"""Extractive generators: each turns one document into draft conversations whose answers come from its
text (a true continuation, an article's lead, a title, a speaker's name), never invented.

:data:`GENERATORS` maps each generator ``type`` to its function; the configs are in
:mod:`gristmill.synth.config`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from gristmill.formats.document import Document
from gristmill.synth.base import Draft, Generator, TaskContext

# ---------------------------------------------------------------------------------------------- text helpers

_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s|$)")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def cut_to_boundary(text: str, max_chars: int) -> str:
    """The longest prefix of ``text`` up to ``max_chars`` that ends a sentence, else a line, else a word.

    Only boundaries in the second half of the window count, so the piece is not much shorter than asked.
    """
    if len(text) <= max_chars:
        return text.strip()
    window = text[:max_chars]
    floor = max_chars // 2
    ends = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() >= floor]
    if not ends:
        ends = [i for i in range(floor, len(window)) if window[i] == "\n"]
    if not ends:
        ends = [i for i in range(floor, len(window)) if window[i].isspace()]
    return window[: ends[-1] if ends else max_chars].strip()


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in re.finditer("\n", text)]


def passage_at(text: str, start: int, tc: TaskContext) -> tuple[str, int]:
    """A passage of random length starting at ``start``, cut at a boundary; returns it and where it ends."""
    want = tc.rng.randint(tc.gen.min_passage_chars, tc.gen.max_passage_chars)
    raw = text[start : start + want]
    passage = cut_to_boundary(raw, want)
    lead = len(raw) - len(raw.lstrip())
    return passage, start + lead + len(passage)


def passage_starts(text: str, tc: TaskContext, reserve: int) -> list[int]:
    """``tc.n`` distinct line starts (not the first line) with at least ``reserve`` characters after them."""
    starts = [s for s in line_starts(text)[1:] if s + reserve <= len(text) and not text[s].isspace()]
    return sorted(tc.rng.sample(starts, min(tc.n, len(starts))))


def display_title(doc: Document, play_readers: Iterable[str]) -> str | None:
    """The title to ask about: for plays, the heading on the text's first line if it looks like one
    ("THE TRAGEDY OF CORIOLANUS"), since file names make poor titles; otherwise ``provenance.title``."""
    if doc.provenance.reader in play_readers:
        first = doc.text.lstrip().split("\n", 1)[0].strip()
        if (
            3 <= len(first) <= 80
            and not first.endswith((".", ",", ";", ":"))
            and re.search(r"[A-Za-z]{3}", first)
        ):
            return first
    title = doc.provenance.title
    return title.strip() if title and title.strip() else None


# ------------------------------------------------------------------------------------------------ generators

CONTINUE_PROMPTS = ("Continue this text:", "Continue the passage below.", "What comes next in this text?")


def continue_text(doc: Document, tc: TaskContext) -> Iterator[Draft]:
    """A passage, then the text that truly follows it in the document."""
    text = doc.text
    for start in passage_starts(text, tc, tc.gen.min_passage_chars + tc.gen.continue_chars):
        passage, end = passage_at(text, start, tc)
        answer = cut_to_boundary(text[end:].lstrip(), tc.gen.continue_chars)
        yield Draft.single("continue", f"{tc.rng.choice(CONTINUE_PROMPTS)}\n\n{passage}", answer, doc)


QA_PROMPTS = (
    "Tell me about {t}.",
    "What is {t}?",
    "What do you know about {t}?",
    "Give me a short overview of {t}.",
)


def encyclopedic_qa(doc: Document, tc: TaskContext) -> Iterator[Draft]:
    """For encyclopedic documents: a question about the title, answered with the article's lead sentences."""
    if doc.provenance.reader not in tc.cfg.encyclopedic_readers or not tc.title:
        return
    # the lead is the first real paragraph (a sentence, not a stray heading line)
    lead = next((p for p in paragraphs(doc.text) if len(p) >= 40 and _SENTENCE_END.search(p)), None)
    if lead is None:
        return
    answer = cut_to_boundary(lead, tc.gen.lead_chars)
    yield Draft.single("qa", tc.rng.choice(QA_PROMPTS).format(t=tc.title), answer, doc)


SOURCE_ANSWERS = ('This passage is from the {kind} "{title}".', 'It comes from "{title}".',
                  'That is a passage from "{title}".')
"""Whole-sentence answers (``answer: sentence``): a model tuned on bare titles learns to answer any
question with a name."""
SPEAKER_ANSWERS = ("{name} speaks these lines{where}.", "These lines are spoken by {name}{where}.",
                   "They are {name}'s lines{where}.")


def source_title(doc: Document, tc: TaskContext) -> Iterator[Draft]:
    """A passage from inside the document; the answer is the work's or article's title."""
    if not tc.title:
        return
    kind = "article" if doc.provenance.reader in tc.cfg.encyclopedic_readers else "work"
    for start in passage_starts(doc.text, tc, tc.gen.min_passage_chars):
        passage, _ = passage_at(doc.text, start, tc)
        answer = (tc.title if tc.gen.answer == "bare"
                  else tc.rng.choice(SOURCE_ANSWERS).format(kind=kind, title=tc.title))
        yield Draft.single("source", f"Which {kind} is this passage from?\n\n{passage}", answer, doc)


# A speaker's name as plays print it: "FIRST CITIZEN." on its own line (modern editions) or an indented
# "  Kent. I thought the King ..." with the speech on the same line (First Folio transcriptions).
_NAME = r"[A-Z][A-Za-z'’]*(?:[ -][A-Z][A-Za-z'’]*){0,3}"
_NAME_LINE = re.compile(rf"^[ \t]*({_NAME})\.[ \t]*$")
_NAME_INLINE = re.compile(rf"^[ \t]+({_NAME})\.[ \t]+(\S.*)$")
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


def speeches(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) turns of a play: a name line, then the lines up to a blank line or the next name."""
    turns: list[tuple[str, str]] = []
    name: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if name is not None and lines:
            turns.append((name, "\n".join(lines)))

    for line in text.splitlines():
        head = _NAME_LINE.match(line) or _NAME_INLINE.match(line)
        if not line.strip() or head:
            flush()
            name, lines = None, []
            if head and head.group(1).split()[0] not in NOT_SPEAKERS:
                name = head.group(1)
                lines = [head.group(2).strip()] if head.re is _NAME_INLINE else []
        elif name is not None:
            lines.append(line.strip())
    flush()
    return turns


def play_speaker(doc: Document, tc: TaskContext) -> Iterator[Draft]:
    """For plays: a speech, and the character who speaks it (the name printed above it)."""
    if doc.provenance.reader not in tc.cfg.play_readers:
        return
    turns = [(n, s) for n, s in speeches(doc.text) if len(s) >= tc.gen.min_speech_chars]
    if len(turns) < 3:  # a text with fewer named turns is not a play; the matches would be accidents
        return
    where = f" in {tc.title}" if tc.title else ""
    for name, speech in tc.rng.sample(turns, min(tc.n, len(turns))):
        speech = cut_to_boundary(speech, tc.gen.max_passage_chars)
        answer = name if tc.gen.answer == "bare" else tc.rng.choice(SPEAKER_ANSWERS).format(name=name, where=where)
        yield Draft.single("speaker", f"Who speaks these lines{where}?\n\n{speech}", answer, doc)


GENERATORS: dict[str, Generator] = {
    "continue": continue_text,
    "qa": encyclopedic_qa,
    "source": source_title,
    "speaker": play_speaker,
}
"""Generator type -> function (an explicit table: nothing registers itself at import)."""
