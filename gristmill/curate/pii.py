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
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal

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
