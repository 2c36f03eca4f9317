"""Tables of text → expected spans for every PII type, including near-misses that must not match."""

from __future__ import annotations

import pytest

from detectors.pii import PiiDetector, PiiScanner, PiiType, card_brand, normalise_type, redact

SCANNER = PiiScanner()


def found(text: str) -> list[tuple[str, str]]:
    return [(m.type.value, m.value) for m in SCANNER.scan(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # email
        ("write to jane.doe+llm@example.co.uk today", [("EMAIL", "jane.doe+llm@example.co.uk")]),
        ("UtaKortig@jourrapide.com", [("EMAIL", "UtaKortig@jourrapide.com")]),
        # phone: national, international, extensions, European groupings
        ("call (415) 555-2671 now", [("PHONE", "(415) 555-2671")]),
        ("+1-984-182-0190", [("PHONE", "+1-984-182-0190")]),
        ("+46 (0)8 928 571 38", [("PHONE", "+46 (0)8 928 571 38")]),
        ("desk 345-899-3560x4587", [("PHONE", "345-899-3560x4587")]),
        ("03.93.92.16.85", [("PHONE", "03.93.92.16.85")]),
        ("phone: 9498777106", [("PHONE", "9498777106")]),
        # credit cards: Visa, 2-series and 5-series Mastercard, Amex, Discover, JCB, grouped
        ("card 4111111111111111", [("CREDIT_CARD", "4111111111111111")]),
        ("mc 2223000048400011", [("CREDIT_CARD", "2223000048400011")]),
        ("mc 5555555555554444", [("CREDIT_CARD", "5555555555554444")]),
        ("amex 378282246310005", [("CREDIT_CARD", "378282246310005")]),
        ("discover 6011111111111117", [("CREDIT_CARD", "6011111111111117")]),
        ("jcb 3530111333300000", [("CREDIT_CARD", "3530111333300000")]),
        ("4111 1111 1111 1111", [("CREDIT_CARD", "4111 1111 1111 1111")]),
        ("4111-1111-1111-1111", [("CREDIT_CARD", "4111-1111-1111-1111")]),
        # US SSN
        ("ssn 123-45-6789", [("US_SSN", "123-45-6789")]),
        ("SSN: 219099998", [("US_SSN", "219099998")]),
        # IBAN, spaced, compact and lowercase
        ("GB82 WEST 1234 5698 7654 32", [("IBAN", "GB82 WEST 1234 5698 7654 32")]),
        ("iban DE89370400440532013000.", [("IBAN", "DE89370400440532013000")]),
        ("gb42nawi04454264788619", [("IBAN", "gb42nawi04454264788619")]),
        # IP addresses
        ("from 192.168.10.254 at", [("IP_ADDRESS", "192.168.10.254")]),
        ("2001:db8::8a2e:370:7334", [("IP_ADDRESS", "2001:db8::8a2e:370:7334")]),
        (
            "6e40:4041:c617:e898:c11:40d2:c669:2eb4",
            [("IP_ADDRESS", "6e40:4041:c617:e898:c11:40d2:c669:2eb4")],
        ),
        # secrets
        ("AKIAIOSFODNN7EXAMPLE", [("SECRET", "AKIAIOSFODNN7EXAMPLE")]),
        ("key sk-proj-AbCdEfGhIjKlMnOpQrStUv12", [("SECRET", "sk-proj-AbCdEfGhIjKlMnOpQrStUv12")]),
        ("ghp_" + "a1B2" * 9, [("SECRET", "ghp_" + "a1B2" * 9)]),
        ("xoxb-123456789012-abcdefABCDEF", [("SECRET", "xoxb-123456789012-abcdefABCDEF")]),
        (
            "Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123",
            [("SECRET", "abcdefghijklmnopqrstuvwxyz0123")],
        ),
        (
            "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            [
                (
                    "SECRET",
                    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                )
            ],
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
            [
                (
                    "SECRET",
                    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
                )
            ],
        ),
    ],
)
def test_finds(text: str, expected: list[tuple[str, str]]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "card 4111111111111112",  # fails Luhn
        "order #4111111111111111",  # Luhn-valid, but an order number
        "order id 8254917364529103",  # random 16-digit order id
        "tracking 1234567812345678",
        "ssn 000-12-3456",  # area 000
        "ssn 666-12-3456",  # area 666
        "ssn 912-12-3456",  # area 9xx
        "ssn 123-00-4567",  # group 00
        "ssn 123-45-0000",  # serial 0000
        "123456789 items",  # bare 9 digits, no SSN context
        "GB82 WEST 1234 5698 7654 33",  # IBAN checksum off by one
        "version 999.1.2.3",  # not an IPv4
        "at 12:30:45 sharp",  # time, not IPv6
        "on 2024-03-15 the price was 1,299",
        "years 2019-2023",
        "lives at 28919 136 Filadelfeos Str.",  # street numbers, not a phone
        "user@localhost",  # no TLD
        "sk-short",
        "AKIA1234",
    ],
)
def test_near_misses_do_not_match(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    ("digits", "brand"),
    [
        ("4111111111111111", "visa"),
        ("2221000000000009", "mastercard"),
        ("2720999999999996", "mastercard"),
        ("5105105105105100", "mastercard"),
        ("378282246310005", "amex"),
        ("6011000990139424", "discover"),
        ("3566002020360505", "jcb"),
        ("30569309025904", "diners"),
        ("6200000000000005", "unionpay"),
    ],
)
def test_card_brands(digits: str, brand: str) -> None:
    assert card_brand(digits) == brand


def test_type_names_map_from_presidio() -> None:
    assert normalise_type("EMAIL_ADDRESS") is PiiType.EMAIL
    assert normalise_type("IBAN_CODE") is PiiType.IBAN
    assert normalise_type("phone") is PiiType.PHONE
    assert normalise_type("PERSON") is None


def test_unknown_type_is_rejected_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid types: EMAIL"):
        PiiScanner(["EMAIL", "PASSPORT"])


def test_redaction_uses_typed_placeholders() -> None:
    text = "mail a@b.com or call (415) 555-2671"
    assert redact(text, SCANNER.scan(text)) == "mail <EMAIL> or call <PHONE>"


def test_response_pii_absent_from_prompt_is_a_leak() -> None:
    detector = PiiDetector()
    finding = detector.score_texts(
        "r1", "my email is a@b.com", "sure a@b.com; also card 4111 1111 1111 1111"
    )
    assert finding is not None
    assert finding.flagged and finding.category == "leak"
    assert finding.details["leaked_types"] == "CREDIT_CARD"
    assert {s.field for s in finding.spans} == {"prompt", "response"}


def test_echoing_the_users_own_pii_is_not_a_leak() -> None:
    finding = PiiDetector().score_texts(
        "r1", "call me at 415 555 2671", "I will call (415) 555-2671"
    )
    assert finding is not None
    assert not finding.flagged and finding.category == "pii"


def test_secrets_are_flagged_even_in_prompts() -> None:
    finding = PiiDetector().score_texts("r1", "my key is AKIAIOSFODNN7EXAMPLE", "ok")
    assert finding is not None and finding.flagged and finding.category == "secret"


def test_clean_text_yields_no_finding() -> None:
    assert PiiDetector().score_texts("r1", "hello", "hi there") is None
