"""PII: each kind found and masked, checksums respected, ordinary numbers left alone, the step's counts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gristmill.curate.pii import (
    KINDS,
    PIIStep,
    RedactPII,
    find_pii,
    iban_valid,
    luhn_valid,
    mask_pii,
    pii_kinds,
)
from gristmill.data.step import StepStats, counted
from gristmill.formats.document import Document, Provenance


def found(text: str) -> list[tuple[str, str]]:
    return [(kind, text[start:end]) for kind, start, end in find_pii(text)]


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("write to jane.doe+news@mail.example.co.uk today", "email", "jane.doe+news@mail.example.co.uk"),
        ("ring +44 20 7946 0958 after six", "phone", "+44 20 7946 0958"),
        ("the Berlin office, +49 (0)30 1234567, is closed", "phone", "+49 (0)30 1234567"),
        ("call (555) 010-9999 now", "phone", "(555) 010-9999"),
        ("call 1-800-555-0199 now", "phone", "1-800-555-0199"),
        ("or 555.010.9999.", "phone", "555.010.9999"),
        ("host 10.0.0.1 answered", "ip", "10.0.0.1"),
        ("from 2001:db8:85a3::8a2e:370:7334 today", "ip", "2001:db8:85a3::8a2e:370:7334"),
        ("loopback ::1 and", "ip", "::1"),
        ("card 4111 1111 1111 1111 expires", "credit_card", "4111 1111 1111 1111"),
        ("card 5555-5555-5555-4444 expires", "credit_card", "5555-5555-5555-4444"),
        ("amex 378282246310005.", "credit_card", "378282246310005"),
        ("pay to GB82 WEST 1234 5698 7654 32 by Friday", "iban", "GB82 WEST 1234 5698 7654 32"),
        ("pay to DE89370400440532013000.", "iban", "DE89370400440532013000"),
        ("SSN 123-45-6789 on file", "national_id", "123-45-6789"),
    ],
)
def test_each_kind_is_found_and_masked(text: str, kind: str, value: str) -> None:
    assert found(text) == [(kind, value)]
    masked = mask_pii(text)
    assert masked == text.replace(value, f"<{kind.upper()}>") and find_pii(masked) == []


def test_checksums_and_invalid_ranges_reject_lookalikes() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert found("card 4111 1111 1111 1112 expires") == []
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB83WEST12345698765432")
    assert not iban_valid("GB82WEST1234569876543")  # a British IBAN has 22 characters
    assert found("pay to GB83 WEST 1234 5698 7654 32") == []
    assert found("ids 000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567, 123-45-0000") == []
    assert found("octets 10.0.0.256 and 192.168.001.1") == []


def test_ordinary_numbers_are_not_pii() -> None:
    text = ("The war lasted from 1914-1918 and 423,000 died. John 3:16 was read at 12:30:45 on 2021-03-04, "
            "as in 1999-2003. See ISBN 978-0-19-852663-6 and ISBN 0-19-852663-6, version 3.10.2, "
            "population 1 500 000, ratio 0.04 to 0.9, price $1,234,567.89, the years 2004 2005 2006 2007, "
            "coordinates 51.5074, -0.1278, pi 3.14159265358979, the archive copy of 20100325081119, "
            "chapter 12.4.1, call std::vector or a::b, and a score of 3-2-1. Section 1.2.3.4 of the RFC, "
            "version 2.0.0.1 and rev. 4.3.2.1 number things, not hosts.")
    assert find_pii(text) == []
    assert found("a host apart: 10.0.0.1") == [("ip", "10.0.0.1")]


def test_real_prose_has_no_pii(wiki_articles: list[str], speeches: list[str]) -> None:
    assert [(i, found(t)) for i, t in enumerate(wiki_articles) if find_pii(t)] == []
    assert [(i, found(t)) for i, t in enumerate(speeches) if find_pii(t)] == []


def test_kinds_in_fixed_order_and_overlaps_resolved() -> None:
    text = "ssn 123-45-6789, mail a.b@example.org, ip 192.0.2.17, phone +1 212 555 0123, card 4111111111111111"
    assert pii_kinds(text) == ["email", "phone", "ip", "credit_card", "national_id"]
    assert pii_kinds(mask_pii(text)) == []
    # The more specific kind wins where matches overlap: the digits of an e-mail are not a phone.
    assert found("write to 555-010-9999@example.org") == [("email", "555-010-9999@example.org")]
    assert find_pii(text, kinds=["ip"]) == [("ip", 42, 52)]
    assert mask_pii(text, kinds=["email"]).count("<") == 1
    with pytest.raises(ValueError, match="unknown PII kind"):
        find_pii(text, kinds=["passport"])


def doc(text: str, i: int) -> Document:
    return Document(id=f"d{i}", text=text, source="test", provenance=Provenance(uri="test", reader="test"))


def test_redact_step_masks_and_counts() -> None:
    texts = ["Write to help.desk@example.org or call (555) 010-9999.", "Nothing personal here at all.",
             "Hosts 192.0.2.17 and 192.0.2.18 replied; mail ops@example.org."]
    step = RedactPII()
    stats = StepStats(name=step.name)
    kept = list(counted(step, [doc(t, i) for i, t in enumerate(texts)], stats))
    assert [d.text for d in kept] == ["Write to <EMAIL> or call <PHONE>.", "Nothing personal here at all.",
                                      "Hosts <IP> and <IP> replied; mail <EMAIL>."]
    assert stats.seen == stats.kept == 3 and stats.changed == 2 and stats.dropped == {}
    assert step.summary() == {"email": 2, "phone": 1, "ip": 2}


def test_report_mode_leaves_text_and_annotates() -> None:
    step = RedactPII(PIIStep(mode="report", kinds=["email"]))
    text = "Write to help.desk@example.org or call (555) 010-9999."
    stats = StepStats(name=step.name)
    (d,) = list(step.run([doc(text, 0)], stats))
    assert d.text == text and d.meta["pii"] == {"email": 1} and stats.changed == 0
    assert step.summary() == {"email": 1}
    assert PIIStep().kinds == list(KINDS)
    with pytest.raises(ValidationError):
        PIIStep(kinds=[])
    with pytest.raises(ValidationError):
        PIIStep(kinds=["passport"])


# ------------------------------------------------------------------------------------------ substitution

NOTE = ("Dr. Alice Johnson, alice.johnson@clinic.org, +44 20 7946 0958, saw John Smith. Johnson said Alice "
        "would call (415) 555-0132 or 415.555.0132. Card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32, "
        "SSN 219-09-9999, hosts 192.168.1.20 and 2001:db8::1. Name: Omar B. Haddad. Later Alice Johnson wrote "
        "to alice.johnson@clinic.org.")


def test_substitutes_keep_each_kind_and_format() -> None:
    pytest.importorskip("faker")
    from gristmill.curate.pii import PIISubstituter

    sub = PIISubstituter(seed=1).document("doc-1")
    out = sub(NOTE)
    originals = [v for _, v in found(NOTE)]
    assert not [v for v in originals if v in out]
    assert not [w for w in ("Alice", "Johnson", "Smith", "Omar", "Haddad") if w in out]
    # every substitute is found again as its own kind: checksums (Luhn, mod-97) and ranges hold
    assert [k for k, _ in found(out)] == [k for k, _ in found(NOTE)]
    new = dict(zip([v for _, v in found(NOTE)], [v for _, v in found(out)], strict=True))
    card = new["4111 1111 1111 1111"]
    assert len(card) == 19 and card[4] == card[9] == " " and luhn_valid(card.replace(" ", ""))
    assert iban_valid(new["GB82 WEST 1234 5698 7654 32"]) and new["GB82 WEST 1234 5698 7654 32"][:2] == "GB"
    assert new["+44 20 7946 0958"].startswith("+44 ")
    assert sub.counts["email"] == 2 and sub.counts["name"] >= 6


def test_the_same_original_gets_the_same_substitute_throughout_a_document() -> None:
    pytest.importorskip("faker")
    from gristmill.curate.pii import PIISubstituter

    s = PIISubstituter(seed=1)
    out = s.document("doc-1")(NOTE)
    emails = [v for k, v in found(out) if k == "email"]
    assert emails[0] == emails[1]
    phones = [v for k, v in found(out) if k == "phone"][1:]
    assert phones[0].replace("(", "").replace(") ", ".").replace("-", ".") == phones[1]  # one number, two layouts
    doctor = out.split("Dr. ", 1)[1].split(",", 1)[0]  # "Alice Johnson" -> "<First> <Last>"
    first, last = doctor.split()
    assert out.count(f"{first} {last}") == 2 and f"{last} said {first} would" in out
    assert s.document("doc-1")(NOTE) == out  # seeded per document: the same bytes again
    assert s.document("doc-2")(NOTE) != out  # another document, other substitutes
    assert PIISubstituter(seed=2).document("doc-1")(NOTE) != out


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("Yesterday Dr. Alice Johnson and Mrs Okafor met.", ["Alice Johnson", "Okafor"]),
        ("Patient: Omar B. Haddad\nWard 4", ["Omar B. Haddad"]),
        ("Maria Rossi and John Smith signed the lease.", ["Maria Rossi", "John Smith"]),
        ("Dr. Smith The end.", ["Smith"]),
        # missed: a name outside the lists with no title or label; upper-case speaker labels
        ("Chidi Okonkwo came home. HAMLET. To be, or not to be.", []),
        # not names: places and days that follow no title
        ("The Grand Canyon in May, Pacific Ocean tides, New York City.", []),
    ],
)
def test_find_names_catches_titled_labelled_and_listed_names(text: str, names: list[str]) -> None:
    pytest.importorskip("faker")
    from gristmill.curate.pii import find_names

    assert [text[s:e] for s, e in find_names(text)] == names


def test_few_names_in_real_prose_are_not_people(speeches: list[str]) -> None:
    pytest.importorskip("faker")
    from gristmill.curate.pii import find_names

    hits = [t[s:e] for t in speeches for s, e in find_names(t)]
    # Shakespeare's 5 MB of speeches: about a hundred hits, nearly all characters' names ("Anne Page")
    assert len(hits) < 200
    assert not [h for h in hits if h.split()[-1] in ("King", "Duke", "Prince", "Lord")]
