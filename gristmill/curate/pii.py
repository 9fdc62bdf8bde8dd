"""Personal data in text: find it, mask it, or redact it in a step. The one place PII rules live.

Six kinds, each a pattern plus, where the kind has one, the check its issuer defines, so that ordinary
numbers do not look like personal data:

- ``email``: ``name@host.tld``.
- ``phone``: international ``+CC ...`` numbers with 8 to 15 digits (the E.164 limit), and North-American
  numbers written with separators, ``(555) 010-9999``, ``555.010.9999``, ``1-555-010-9999``. Bare digit
  runs are not phones: they are far more often counts, codes and ids.
- ``ip``: IPv4 dotted quads with octets up to 255, and IPv6 addresses (checked by :mod:`ipaddress`).
- ``credit_card``: 13 to 19 digits, optionally grouped by spaces or dashes, with a prefix and length some
  card network issues (so not an ISBN-13, 978/979, nor a 14-digit timestamp), passing the Luhn checksum,
  and not a run of years.
- ``iban``: country code, check digits and account, optionally in groups of four, of the length its
  country defines and passing the ISO 13616 mod-97 check.
- ``national_id``: US Social Security numbers ``ddd-dd-dddd`` outside the never-issued ranges (area 000,
  666 or 900-999, group 00, serial 0000).

Years, year ranges ("1914-1918"), dates, verse references ("3:16"), version numbers ("3.10.2", and
"version 1.2.3.4" or "Section 1.2.3.4": a dotted quad after a numbering word), ISBNs and grouped numbers
("1 500 000") are not matched. Where two matches overlap, the more specific kind wins
(e-mail, IBAN, card, national id, IP, phone).

:func:`find_pii` gives ``(kind, start, end)`` spans, :func:`pii_kinds` the kinds present, :func:`mask_pii`
the text with each span replaced by ``<EMAIL>``, ``<PHONE>``, ``<IP>``, ``<CREDIT_CARD>``, ``<IBAN>`` or
``<NATIONAL_ID>``. :class:`RedactPII` is the curation step.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

from pydantic import Field

from gristmill.core.config import Config
from gristmill.data.step import StepStats
from gristmill.formats.document import Document

PIIKind = Literal["email", "phone", "ip", "credit_card", "iban", "national_id"]
KINDS: tuple[PIIKind, ...] = ("email", "phone", "ip", "credit_card", "iban", "national_id")
"""Every kind, in the order :func:`pii_kinds` reports them."""
PLACEHOLDERS: dict[str, str] = {k: f"<{k.upper()}>" for k in KINDS}
# Which match wins where two overlap: the more specific pattern first.
_PRIORITY: tuple[PIIKind, ...] = ("email", "iban", "credit_card", "national_id", "ip", "phone")

# Every pattern below starts with a character class and checks the character before the match with a
# lookbehind placed after that first character: the regex engine can then skip in C to the next candidate
# character instead of trying the lookbehind at every position (about three times faster on prose).

# E-mail addresses are found from each "@" outwards: a pattern that scanned for the local part would try
# every word of every text, and most texts have no "@".
_EMAIL_LOCAL = re.compile(r"(?<![\w.+-])[\w+-]+(?:\.[\w+-]+)*\Z")  # searched in the 64 characters before "@"
_EMAIL_DOMAIN = re.compile(r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                           r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])")

# "+44 20 7946 0958", "+1-555-010-9999", "+49 (0)30 1234567": a plus, then digit groups with at most one
# separator between them; the digit count is checked after the match.
_PHONE_INTL = re.compile(r"\+(?<![\w+]\+)\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?!\w)")
# North-American numbers with separators: "(555) 010-9999", "1-555-010-9999", "555.010.9999".
_PHONE_NANP = re.compile(
    r"(?:\((?<![\w+.-]\()\d{3}\)[ .-]?"
    r"|1(?<![\w+.-]1)[ .-](?:\(\d{3}\)[ .-]?|\d{3}[ .-])"
    r"|\d(?<![\w+.-]\d)\d\d[ .-])"
    r"\d{3}[ .-]\d{4}(?!\w|[.-]\d)")

# Dotted quads; octets above 255 and leading zeros are ruled out by _ipv4_valid. A quad right after a word
# that numbers things ("Section 1.2.3.4", "version 2.0.0.1") is a section or version number, not a host.
_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3}(?!\w|\.\d)")
_NUMBERING_WORD = re.compile(r"(?:\b(?:section|sections|sec|version|ver|v|revision|rev|release|chapter|clause|"
                             r"paragraph|article|rule|step|part|item|no)|§)[.:]?\s*\Z", re.IGNORECASE)
# Runs of hex digits, colons and dots with at least two colons (``::`` compression, an IPv4 tail);
# _ipv6_valid asks ipaddress whether the run is an address.
_IPV6 = re.compile(r"[0-9A-Fa-f:](?<![\w:.][0-9A-Fa-f:])[0-9A-Fa-f]{0,3}:[0-9A-Fa-f:.]*[0-9A-Fa-f:](?![\w:])")

# A maximal run of 13 to 19 digits with single spaces or dashes between them.
_CARD = re.compile(r"\d(?<![\w+-]\d)(?<!\d[ -]\d)(?:[ -]?\d){12,18}(?![ -]?\d)(?!\w)")

# ddd-dd-dddd; the never-issued ranges are ruled out by _ssn_valid.
_SSN = re.compile(r"\d(?<![\w-]\d)\d\d-\d\d-\d{4}(?![\w-])")

_IBAN = re.compile(r"[A-Z](?<![\w-][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![\w-])")
# IBAN length by country (ISO 13616 registry); a country not listed must have 15-34 characters.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum card numbers carry in their last digit: from the right, every second digit is
    doubled (minus 9 above 9), and the sum must be a multiple of 10."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """Length for its country and the ISO 13616 check: the country and check digits moved to the end,
    letters as 10-35, the number is 1 modulo 97."""
    iban = candidate.replace(" ", "")
    expected = IBAN_LENGTHS.get(iban[:2])
    if (expected is not None and len(iban) != expected) or not 15 <= len(iban) <= 34:
        return False
    return int("".join(str(int(c, 36)) for c in iban[4:] + iban[:4])) % 97 == 1


def card_issuer_length_ok(digits: str) -> bool:
    """Whether some card network issues numbers with this prefix and this many digits (Visa, Mastercard,
    American Express, Diners Club, Discover, JCB, UnionPay, Maestro). Rules out most long numbers that
    pass Luhn by chance: the 14-digit archive timestamps ``20100325081119`` start like no 14-digit card."""
    n, p2, p3, p4 = len(digits), int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)  # Visa
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16  # Mastercard
    if p2 in (34, 37):
        return n == 15  # American Express
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):
        return n in (14, 16, 19)  # Diners Club
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65:
        return n in (16, 19)  # Discover
    if 3528 <= p4 <= 3589 or p2 == 62:
        return 16 <= n <= 19  # JCB, UnionPay
    return p2 == 50 or 56 <= p2 <= 69  # Maestro: 12 to 19 digits


def _card_valid(match: str) -> bool:
    digits = re.sub(r"[ -]", "", match)
    if not card_issuer_length_ok(digits) or not luhn_valid(digits):
        return False
    groups = re.split(r"[ -]", match)
    # "2004 2005 2006 2007" is a run of years, not a card, whatever its checksum.
    return not (len(groups) > 1 and all(len(g) == 4 and 1000 <= int(g) <= 2099 for g in groups))


def _phone_valid(match: str) -> bool:
    return 8 <= sum(c.isdigit() for c in match) <= 15


def _ipv4_valid(match: str) -> bool:
    return all(int(octet) <= 255 and (octet == "0" or octet[0] != "0") for octet in match.split("."))


def _ssn_valid(match: str) -> bool:
    """Not in a range the US Social Security Administration never issues: area 000, 666 or 900-999,
    group 00, serial 0000."""
    area, group, serial = match.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _ipv6_valid(match: str) -> bool:
    if not any(c.isdigit() for c in match):  # "a::b", "Face::Bad" in code are names, not addresses
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


Finder = Callable[[str], Iterator[tuple[int, int]]]


def _emails(text: str) -> Iterator[tuple[int, int]]:
    at = text.find("@")
    while at >= 0:
        domain = _EMAIL_DOMAIN.match(text, at)
        local = _EMAIL_LOCAL.search(text, max(0, at - 64), at) if domain else None
        if domain and local:
            yield local.start(), domain.end()
        at = text.find("@", at + 1)


def _matches(pattern: re.Pattern[str], valid: Callable[[str], bool] | None = None, needs: str = "") -> Finder:
    """A finder yielding the spans of ``pattern`` that pass ``valid``; a text without the character
    ``needs``, which every match contains, is not searched."""

    def find(text: str) -> Iterator[tuple[int, int]]:
        if needs and needs not in text:
            return
        for m in pattern.finditer(text):
            if valid is None or valid(m.group()):
                yield m.span()

    return find


def _ipv4s(text: str) -> Iterator[tuple[int, int]]:
    if "." not in text:
        return
    for m in _IPV4.finditer(text):
        if _ipv4_valid(m.group()) and not _NUMBERING_WORD.search(text, max(0, m.start() - 12), m.start()):
            yield m.span()


_FINDERS: dict[str, list[Finder]] = {
    "email": [_emails],
    "iban": [_matches(_IBAN, iban_valid)],
    "credit_card": [_matches(_CARD, _card_valid)],
    "national_id": [_matches(_SSN, _ssn_valid, needs="-")],
    "ip": [_ipv4s, _matches(_IPV6, _ipv6_valid, needs=":")],
    "phone": [_matches(_PHONE_INTL, _phone_valid, needs="+"), _matches(_PHONE_NANP)],
}


_DIGIT = re.compile(r"\d")
_NEEDS_DIGIT = frozenset({"iban", "credit_card", "national_id", "phone"})
"""Kinds no text without a digit can hold (an IPv6 address needs one too; e-mail addresses need none)."""


def find_pii(text: str, kinds: Iterable[str] = KINDS) -> list[tuple[str, int, int]]:
    """Personal data in ``text`` as ``(kind, start, end)`` spans, sorted by position and not overlapping;
    ``kinds`` limits the search (default: every kind)."""
    wanted = set(kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown PII kind(s) {sorted(unknown)}; use some of {', '.join(KINDS)}")
    if _DIGIT.search(text) is None:  # most prose: only e-mail addresses are possible
        wanted -= _NEEDS_DIGIT | {"ip"}
    taken: list[tuple[int, int, str]] = []  # (start, end, kind), sorted, never overlapping
    for kind in _PRIORITY:
        if kind not in wanted:
            continue
        for find in _FINDERS[kind]:
            for start, end in find(text):
                at = bisect.bisect_left(taken, (start,))
                if (at and taken[at - 1][1] > start) or (at < len(taken) and taken[at][0] < end):
                    continue  # overlaps a match of a more specific kind
                taken.insert(at, (start, end, kind))
    return [(kind, start, end) for start, end, kind in taken]


def pii_kinds(text: str) -> list[str]:
    """The kinds of personal data present in ``text``, in the fixed order of :data:`KINDS`."""
    found = {kind for kind, _, _ in find_pii(text)}
    return [k for k in KINDS if k in found]


def mask_spans(text: str, spans: Sequence[tuple[str, int, int]]) -> str:
    """``text`` with each ``(kind, start, end)`` span (sorted, not overlapping) replaced by its placeholder."""
    parts: list[str] = []
    at = 0
    for kind, start, end in spans:
        parts.append(text[at:start])
        parts.append(PLACEHOLDERS[kind])
        at = end
    parts.append(text[at:])
    return "".join(parts)


def mask_pii(text: str, kinds: Iterable[str] = KINDS) -> str:
    """``text`` with personal data replaced by typed placeholders (``<EMAIL>``, ``<PHONE>`` ...)."""
    return mask_spans(text, find_pii(text, kinds))


class PIIStep(Config):
    """Find personal data in every document: mask it, or only count it."""

    type: Literal["pii"] = "pii"
    """``pii``."""
    mode: Literal["redact", "report"] = "redact"
    """``redact`` replaces each match with its placeholder (``<EMAIL>`` ...); ``report`` leaves the text
    alone and records the counts per kind in ``meta.pii`` of the documents that have any."""
    kinds: list[PIIKind] = Field(default_factory=lambda: list(KINDS), min_length=1, max_length=len(KINDS))
    """Which kinds to look for: ``email``, ``phone``, ``ip``, ``credit_card``, ``iban``, ``national_id``."""


class RedactPII:
    """Mask (or count) personal data in every document; no document is dropped.

    ``found`` counts the matches by kind over the step's life (:meth:`summary`); ``stats.changed`` counts
    the documents whose text was redacted.
    """

    name = "pii"

    def __init__(self, cfg: PIIStep | None = None) -> None:
        self.cfg = cfg if cfg is not None else PIIStep()
        self.found: Counter[str] = Counter()

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        redact = self.cfg.mode == "redact"
        for doc in docs:
            spans = find_pii(doc.text, self.cfg.kinds)
            if spans:
                counts = Counter(kind for kind, _, _ in spans)
                self.found.update(counts)
                if redact:
                    doc.text = mask_spans(doc.text, spans)
                    stats.changed += 1
                else:
                    doc.meta["pii"] = {k: counts[k] for k in KINDS if k in counts}
            yield doc

    def summary(self) -> dict[str, int]:
        """Matches found so far, by kind, in the order of :data:`KINDS`."""
        return {k: self.found[k] for k in KINDS if self.found[k]}


# ------------------------------------------------------------------------------------------ substitution
#
# Masking loses what a text is about ("<EMAIL> wrote to <EMAIL>"); substitution keeps it readable and
# consistent while removing the real values: each original maps to one realistic fake of the same kind and
# format for the whole document (the same person keeps the same fake name in every mention), generated by
# Faker seeded from the document's key, so a re-run gives the same bytes. Needs the ``privacy`` extra.

NAME = "name"
"""The kind :func:`find_names` reports; not one of :data:`KINDS` (masking and the draft guard leave names
alone: detecting them is list- and pattern-based, so less certain than the checksummed kinds)."""

_NAME_WORD = r"[A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ]+(?:['-][A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ]+)?"
_NAME_WORD_RE = re.compile(rf"(?<![\w'-]){_NAME_WORD}(?![\w'-])")
# A title then one or two capitalised words: "Dr. Alice Johnson", "Mrs Okafor".
_HONORIFIC_NAME = re.compile(rf"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?[ \t]+({_NAME_WORD}(?:[ \t]+{_NAME_WORD})?)")
# A form label then a full name: "Name: Alice B. Johnson", "Patient: Omar Haddad".
_LABELLED_NAME = re.compile(
    r"\b(?:[Nn]ame|Patient|Contact|Customer|Client|Employee|Applicant|Sender|Recipient|Signed|Author)"
    rf"[ \t]*:[ \t]*({_NAME_WORD}(?:[ \t]+[A-Z]\.)?(?:[ \t]+{_NAME_WORD}){{1,2}})")
# Capitalised words that follow a title or label without being a name ("Dr. The", "Name: Please Enter").
_NOT_NAMES = frozenset("The A An And But Or Of In On At To For From By With He She It We They You I "
                       "This That These Those His Her Their Our Your My Please Enter None Unknown Else Till "
                       "King Queen Prince Princess Duke Duchess Lord Lady Earl Count Baron Saint".split())
_NAME_LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT")


class _NameLists:
    """Faker's first and last names of a few locales (about 3,600 and 3,900): a first name followed by a
    last name is taken for a person without a title."""

    def __init__(self) -> None:
        import importlib

        self.first: set[str] = set()
        self.last: set[str] = set()
        for loc in _NAME_LOCALES:
            provider = importlib.import_module(f"faker.providers.person.{loc}").Provider
            self.first.update(getattr(provider, "first_names", ()))
            self.last.update(getattr(provider, "last_names", ()))
        self.first -= _NOT_NAMES
        self.last -= _NOT_NAMES


def _name_lists() -> _NameLists:
    from gristmill.core.extras import check

    check("faker", "privacy", "synth.privacy.substitute_pii")
    return _NameLists()


def find_names(text: str, lists: _NameLists | None = None) -> list[tuple[int, int]]:
    """Spans of person names in ``text``, sorted and not overlapping, found three ways:

    - after a title: ``Mr``, ``Mrs``, ``Ms``, ``Miss``, ``Mx``, ``Dr``, ``Prof`` (with or without a dot),
      one or two capitalised words (``Dr. Alice Johnson``, ``Mrs Okafor``);
    - after a form label: ``Name:``, ``Patient:``, ``Contact:``, ``Customer:``, ``Client:``, ``Employee:``,
      ``Applicant:``, ``Sender:``, ``Recipient:``, ``Signed:``, ``Author:``, two or three capitalised words
      with an optional middle initial;
    - a first name followed by a last name, both from Faker's name lists of six European locales
      (``Maria Rossi``, ``John Smith``).

    Missed: a name without a title or label whose first or last part is not in those lists (many non-European
    names), a lone first or last name the first time it appears, names written in lower or upper case
    (``HAMLET``). Wrongly taken: a place or thing named like a person (``Grace Church``, ``Jordan Hall``).
    :class:`PIISubstituter` also replaces every later lone mention of a found name's words.
    """
    lists = lists if lists is not None else _name_lists()
    spans: list[tuple[int, int]] = []
    for pattern in (_HONORIFIC_NAME, _LABELLED_NAME):
        for m in pattern.finditer(text):
            words = list(re.finditer(r"\S+", m.group(1)))
            while words and words[-1].group() in _NOT_NAMES:  # "Dr. Smith The" -> "Smith"
                words.pop()
            if words and words[0].group() not in _NOT_NAMES:
                spans.append((m.start(1), m.start(1) + words[-1].end()))
    prev: re.Match[str] | None = None
    for m in _NAME_WORD_RE.finditer(text):
        if (prev is not None and prev.group() in lists.first and m.group() in lists.last
                and text[prev.end():m.start()] in (" ", "\t")):
            spans.append((prev.start(), m.end()))
        prev = m
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _luhn_complete(body: str) -> str:
    """``body`` with the check digit that makes it pass :func:`luhn_valid`."""
    for d in "0123456789":
        if luhn_valid(body + d):
            return body + d
    raise AssertionError("unreachable: one of ten check digits always passes")


def _iban_check_digits(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    return f"{98 - int(''.join(str(int(c, 36)) for c in rearranged)) % 97:02d}"


def _pour(template: str, chars: str) -> str:
    """``template`` with its letters and digits replaced, in order, by ``chars``: a fake value takes the
    original's layout ("4111 1111-..." groups, "(555) 010-9999" punctuation, a leading "+")."""
    it = iter(chars)
    return "".join(next(it) if c.isalnum() else c for c in template)


class Substitution:
    """One document's substitutes: call it on each of the document's texts (body, title); an original seen
    again, in any of them, gets the substitute it got the first time. ``counts`` tallies replaced spans by
    kind."""

    def __init__(self, fake: Any, lists: _NameLists, kinds: Sequence[str], names: bool) -> None:
        self.fake = fake
        self.lists = lists
        self.kinds = kinds
        self.names = names
        self.values: dict[tuple[str, str], str] = {}  # (kind, normalised original) -> substitute
        self.words: dict[str, str] = {}  # a name's word -> its substitute word
        self.family: dict[str, bool] = {}  # a name's word -> whether it was found as a family name
        self.counts: Counter[str] = Counter()

    def __call__(self, text: str) -> str:
        spans = [(k, s, e) for k, s, e in find_pii(text, self.kinds)]
        if self.names:
            taken = [(s, e) for _, s, e in spans]
            for s, e in find_names(text, self.lists):
                if not any(s < te and ts < e for ts, te in taken):
                    spans.append((NAME, s, e))
                    words = [w for w in text[s:e].split() if len(w) > 2 and w[0].isupper()]
                    for k, word in enumerate(words):
                        if word not in self.words:
                            self.words[word] = ""  # filled in by _name below, in order of appearance
                            # a name's last word is the family name: "Johnson" alone later is one too
                            self.family[word] = k == len(words) - 1
            if self.words:  # later lone mentions of a found name's words ("... said Johnson")
                taken = [(s, e) for _, s, e in spans]
                lone = re.compile(r"(?<![\w'-])(?:" + "|".join(map(re.escape, sorted(self.words, key=len,
                                  reverse=True))) + r")(?![\w'-])")
                for m in lone.finditer(text):
                    if not any(m.start() < te and ts < m.end() for ts, te in taken):
                        spans.append((NAME, m.start(), m.end()))
            spans.sort(key=lambda x: x[1])
        parts: list[str] = []
        at = 0
        for kind, start, end in spans:
            parts.append(text[at:start])
            parts.append(self._substitute(kind, text[start:end]))
            self.counts[kind] += 1
            at = end
        parts.append(text[at:])
        return "".join(parts)

    def _substitute(self, kind: str, original: str) -> str:
        if kind == NAME:
            return self._name(original)
        # one person's number written two ways ("(555) 010-9999", "555.010.9999") is one value
        norm = original.lower() if kind in ("email", "ip") else re.sub(r"[^0-9A-Za-z]", "", original).upper()
        key = (kind, norm)
        if key not in self.values:
            fake = getattr(self, f"_fake_{kind}")(original)
            while fake == original:  # a substitute never equals its original (vanishingly rare)
                fake = getattr(self, f"_fake_{kind}")(original)
            self.values[key] = fake
        known = self.values[key]
        # the same value written another way ("555.010.9999" after "(555) 010-9999") takes this one's layout
        if kind in ("phone", "credit_card", "iban", "national_id"):
            fill = "".join(c for c in known if c.isalnum())
            if len(fill) == sum(c.isalnum() for c in original):
                return _pour(original, fill)
        return known

    def _name(self, original: str) -> str:
        parts = re.split(r"(\s+)", original)
        # the last word of a name is the family name, the words before it given names (a word met alone
        # keeps the part it had in the name it was found in); a middle initial ("B.") stays, harmless alone
        words = [i for i, w in enumerate(parts) if w and not w.isspace() and len(w.rstrip(".")) > 1]
        for i in words:
            word = parts[i]
            if not self.words.get(word):
                family = self.family.get(word, True) if len(words) == 1 else i == words[-1]
                draw = self.fake.last_name if family else self.fake.first_name
                new = draw()
                while new == word or new in self.words.values():
                    new = draw()
                self.words[word] = new
            parts[i] = self.words[word]
        return "".join(parts)

    def _digits(self, n: int) -> str:
        return "".join(str(self.fake.random.randint(0, 9)) for _ in range(n))

    def _fake_email(self, original: str) -> str:
        return f"{self.fake.user_name()}@{self.fake.safe_domain_name()}"

    def _fake_phone(self, original: str) -> str:
        digits = re.sub(r"\D", "", original)
        if original.startswith("+"):  # keep the country code: the number stays plausible for its country
            keep = len(re.match(r"\+\(?(\d{1,3})", original).group(1))
        else:
            keep = 1 if len(digits) == 11 and digits[0] == "1" else 0
        # North-American area codes and exchanges start with 2-9
        rest = str(self.fake.random.randint(2, 9)) + self._digits(len(digits) - keep - 1)
        return _pour(original, digits[:keep] + rest)

    def _fake_credit_card(self, original: str) -> str:
        digits = re.sub(r"\D", "", original)
        # the issuer's prefix (not personal) keeps the network and length valid; the account is new
        fake = _luhn_complete(digits[:4] + self._digits(len(digits) - 5))
        return _pour(original, fake)

    def _fake_iban(self, original: str) -> str:
        compact = original.replace(" ", "")
        country, bban = compact[:2], compact[4:]
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        new = "".join(self.fake.random.choice(letters) if c.isalpha() else str(self.fake.random.randint(0, 9))
                      for c in bban)
        return _pour(original, country + _iban_check_digits(country, new) + new)

    def _fake_national_id(self, original: str) -> str:
        area = self.fake.random.choice([a for a in range(1, 900) if a != 666])
        return f"{area:03d}-{self.fake.random.randint(1, 99):02d}-{self.fake.random.randint(1, 9999):04d}"

    def _fake_ip(self, original: str) -> str:
        return self.fake.ipv6() if ":" in original else self.fake.ipv4_public()


class PIISubstituter:
    """Realistic, consistent substitutes for personal data, one :class:`Substitution` per document.

    ``document(key)`` seeds Faker from ``seed`` and ``key`` (the document id), so the same document gets the
    same substitutes on every run whatever else is in the corpus. ``kinds`` are the :data:`KINDS` to
    replace; ``names`` also replaces person names (:func:`find_names`). Needs the ``privacy`` extra (Faker).
    """

    def __init__(self, seed: int = 0, kinds: Iterable[str] = KINDS, names: bool = True) -> None:
        from gristmill.core.extras import require

        faker = require("faker", "privacy", "synth.privacy.substitute_pii")
        self.seed = seed
        self.kinds = tuple(kinds)
        self.names = names
        self.fake = faker.Faker("en_US")
        self.lists = _name_lists()

    def document(self, key: str) -> Substitution:
        """A fresh substitution for the document ``key``, its random stream seeded from (seed, key)."""
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        self.fake.seed_instance(int.from_bytes(digest[:8], "big"))
        return Substitution(self.fake, self.lists, self.kinds, self.names)


def substitute_pii(text: str, key: str = "", seed: int = 0, kinds: Iterable[str] = KINDS,
                   names: bool = True) -> str:
    """``text`` with its personal data replaced by consistent realistic substitutes (one-off use; a corpus
    should reuse one :class:`PIISubstituter`, which loads Faker once)."""
    return PIISubstituter(seed, kinds, names).document(key)(text)
