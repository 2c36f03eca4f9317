"""Tables of text → expected spans for every PII type, including near-misses that must not match."""

from __future__ import annotations

import dataclasses
import re
import time

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stdnum import luhn

from detectors.base import DetectorRegistry
from detectors.pii import (
    DEFAULT_PATTERNS,
    PiiDetector,
    PiiPattern,
    PiiScanner,
    PiiType,
    card_brand,
    luhn_valid,
    normalise_type,
    redact,
)

SCANNER = PiiScanner()
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


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
        # letters that match ASCII ones ignoring case, but lowercase to others (ſ: s, İ and ı: i)
        ("\u017f\u017fn: 219099998", [("US_SSN", "219099998")]),
        ("SOC\u0130AL SECUR\u0130TY 219099998", [("US_SSN", "219099998")]),
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


# --- bounded, linear-time scanning ----------------------------------------------------------


def emails(n: int) -> str:
    return " ".join(f"user{i}@example{i % 97}.com" for i in range(n))


def test_matches_past_the_bound_are_masked_as_one_unscanned_tail() -> None:
    text = emails(12)
    matches = PiiScanner(max_matches=5).scan(text)
    assert [m.type for m in matches] == [PiiType.EMAIL] * 5 + [PiiType.UNSCANNED]
    tail = matches[-1]
    assert tail.start == text.index("user5@") and tail.end == len(text) and tail.value == ""
    assert redact(text, matches) == " ".join(["<EMAIL>"] * 5) + " <UNSCANNED>"


def test_the_bounded_scan_keeps_the_first_matches_of_the_full_scan() -> None:
    text = " ".join(
        f"{i}: mail a{i}@x.org, call (415) 555-{2600 + i:04d}, ip 10.0.0.{i}, ssn 123-45-{6700 + i}"
        for i in range(40)
    )
    full = SCANNER.scan(text)
    for bound in (1, 7, 50, 159):
        bounded = PiiScanner(max_matches=bound).scan(text)
        assert bounded[:-1] == full[:bound]
        assert bounded[-1].type is PiiType.UNSCANNED and bounded[-1].start == full[bound].start


def test_a_text_past_the_length_bound_is_cut_at_whitespace_and_the_rest_masked() -> None:
    text = "mail a@b.com " + "x" * 20 + " then c@d.org and e@f.net"
    matches = PiiScanner(max_scan_chars=text.index("c@d.org") + 3).scan(text)
    assert [m.value for m in matches[:-1]] == ["a@b.com"]
    assert redact(text, matches) == "mail <EMAIL> " + "x" * 20 + " then <UNSCANNED>"


def test_a_text_within_the_bounds_has_no_unscanned_tail() -> None:
    text = emails(5)
    assert all(m.type is PiiType.EMAIL for m in PiiScanner(max_matches=5).scan(text))
    assert PiiScanner(max_scan_chars=len(text)).scan(text)[-1].type is PiiType.EMAIL


def test_the_finding_says_which_texts_were_truncated() -> None:
    detector = PiiDetector(PiiScanner(max_matches=3))
    finding = detector.score_texts("r1", emails(2), emails(10))
    assert finding is not None
    assert finding.details["truncated"] == "true"
    assert finding.details["truncated_fields"] == "response"
    assert finding.details["response_types"] == "EMAIL"  # the tail is not a PII type
    assert finding.spans[-1].type == "UNSCANNED" and finding.spans[-1].field == "response"
    whole = PiiDetector().score_texts("r1", "a@b.com", "ok")
    assert whole is not None and "truncated" not in whole.details


def test_a_truncated_text_without_pii_still_yields_a_finding_to_mask_its_tail() -> None:
    text = "word " * 100
    finding = PiiDetector(PiiScanner(max_scan_chars=50)).score_texts("r1", "hi", text)
    assert finding is not None and not finding.flagged
    assert finding.category == "truncated" and finding.details["leaked_types"] == ""
    assert [(s.type, s.end) for s in finding.spans] == [("UNSCANNED", len(text))]


def test_the_pipeline_stores_a_truncated_text_with_its_tail_masked() -> None:
    from monitor.ingest.decode import RawMessage
    from monitor.scoring.pipeline import Pipeline

    body = {"request_id": "r1", "timestamp": 1_795_514_400_000, "model": "m",
            "model_version": "v1", "prompt": "hi", "response": emails(8)}  # fmt: skip
    raw = RawMessage(msgspec.json.encode(body), b"k", "llm.events", 0, 1, 1_795_514_400_000)
    registry = DetectorRegistry([PiiDetector(PiiScanner(max_matches=3))])
    row = Pipeline(registry).process([raw]).scored.events[0]
    assert row.response == "<EMAIL> <EMAIL> <EMAIL> <UNSCANNED>"


def test_unscanned_is_not_a_type_one_can_ask_for() -> None:
    assert normalise_type("UNSCANNED") is None
    with pytest.raises(ValueError, match="valid types"):
        PiiScanner(["UNSCANNED"])
    with pytest.raises(ValueError, match="at least 1"):
        PiiScanner(max_matches=0)


def test_scanning_is_linear_in_the_number_of_matches() -> None:
    unbounded = PiiScanner(max_scan_chars=10**9, max_matches=10**9)
    text = emails(40_000)  # 944 kB: 25 s when overlaps were checked pairwise
    started = time.perf_counter()
    assert len(unbounded.scan(text)) == 40_000
    assert time.perf_counter() - started < 5.0


def test_many_private_key_headers_without_an_end_are_linear() -> None:
    text = "-----BEGIN RSA PRIVATE KEY-----\n" * 4_000  # 8 s when each header read to the end
    started = time.perf_counter()
    assert len(SCANNER.scan(text)) == 1_001
    assert time.perf_counter() - started < 2.0


def test_a_private_key_body_does_not_run_across_another_header() -> None:
    text = (
        "-----BEGIN PRIVATE KEY-----\ncut off\n"
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    )
    assert [m.value for m in SCANNER.scan(text)] == [
        "-----BEGIN PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
    ]


def test_leak_check_finds_values_the_prompt_scan_rejected() -> None:
    finding = PiiDetector().score_texts(
        "r1", "order #4111111111111111 and jane@corp.com.", "card 4111111111111111"
    )
    assert finding is not None and not finding.flagged and finding.category == "pii"


def test_leak_check_stops_at_its_budget_and_says_so() -> None:
    prompt = "order #4111111111111111 " + "lorem ipsum " * 100
    detector = PiiDetector(leak_search_chars=len(prompt) // 2)
    finding = detector.score_texts("r1", prompt, "card 4111111111111111, mail a@b.com")
    assert finding is not None
    assert finding.details["leak_check_truncated"] == "true"
    assert not finding.flagged  # values left unsearched are not called leaks


def test_one_leak_per_type_is_enough_to_stop_searching() -> None:
    response = emails(1_000)
    finding = PiiDetector(leak_search_chars=50_000).score_texts("r1", "x " * 10_000, response)
    assert finding is not None and finding.category == "leak"
    assert finding.details["leaked_types"] == "EMAIL"
    assert "leak_check_truncated" not in finding.details


# --- the fast paths find what the plain patterns find ----------------------------------------


def plain(pattern: PiiPattern) -> PiiPattern:
    """The pattern with no prefilter, and out of the one pass over digit runs."""
    return dataclasses.replace(pattern, anchor="", lead=None, head="", requires_lower=())


class PlainScanner(PiiScanner):
    """Every pattern's own regex over every text (the digit rule aside): the reference."""

    PATTERNS = tuple(plain(p) for p in DEFAULT_PATTERNS)


FRAGMENTS = (
    "call (415) 555-2671", "+1-984-182-0190", "+46 (0)8 928 571 38", "345-899-3560x4587",
    "03.93.92.16.85", "+447700 921 916", "9498777106", "4111 1111 1111 1111", "4111111111111111",
    "378282246310005", "order #", "card ", "ssn 123-45-6789", "SSN: ", "219099998",
    "GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "gb42nawi04454264788619",
    "192.168.10.254", "2001:db8::8a2e:370:7334", "fe80::1", "a@b.com", "jane.doe+x@example.co.uk",
    "AKIAIOSFODNN7EXAMPLE", "sk-proj-AbCdEfGhIjKlMnOpQrStUv12", "ghp_" + "a1B2" * 9,
    "Bearer abcdefghijklmnopqrstuvwxyz0123", "aws_secret_access_key=" + "A" * 40,
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jV",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
    "2024-03-15", "12:30:45", "Apt. 864", "lives at 28919 136 Filadelfeos Str.", "ext. 12",
    "\u0661\u0662\u0663-\u0664\u0665\u0666-\u0667\u0668\u0669\u0660", "\u017f\u017fn ",
)  # fmt: skip
TEXTS = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.text(alphabet="0123456789 +-.()#:/@_xeJAKIab\n\u0663\u0130", max_size=12),
    ),
    max_size=8,
).map("".join)


@FUZZ
@given(TEXTS)
def test_prefilters_and_the_one_pass_over_digit_runs_change_no_finding(text: str) -> None:
    assert SCANNER.scan(text) == PlainScanner().scan(text)
    assert PiiScanner(max_matches=2).scan(text) == PlainScanner(max_matches=2).scan(text)


def test_the_reference_scanner_is_plain() -> None:
    reference = PlainScanner()
    assert all(not step.pattern.anchor and not step.pattern.head for step in reference._plan)
    assert reference._runs is None and SCANNER._runs is not None


# The phone regex as it reads best; the module's is written to begin with its first character.
READABLE_PHONE = re.compile(
    r"(?=[+(\d])(?<![\w+/.-])(?:\+\d{1,3}[ .-]?)?(?:\(0\) ?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,5}"
    r"(?:[ .-]\d{1,5}){0,4}[ .-]\d{1,8}(?:(?:x|ext\.? ?)\d{1,6})?(?!\w|-\d|\.\d)"
    r"|(?=[+\d])(?<![\w+])\+?\d{10,13}(?!\w)"
)
PHONE = next(p for p in DEFAULT_PATTERNS if p.type is PiiType.PHONE)


@FUZZ
@given(st.text(alphabet="0123456789  ..--++(())xet/#a_\n\u0663", max_size=40), st.data())
def test_the_phone_regex_finds_what_its_readable_form_finds(text: str, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(text)))
    spans = [m.span() for m in PHONE.regex.finditer(text, pos)]
    assert spans == [m.span() for m in READABLE_PHONE.finditer(text, pos)]


@FUZZ
@given(st.text(alphabet="0123456789", max_size=20) | st.text(alphabet="0123\u0663", max_size=4))
def test_luhn_agrees_with_stdnum(digits: str) -> None:
    assert luhn_valid(digits) == luhn.is_valid(digits)


NOT_A_CARD_BEFORE = re.compile(
    r"(?i)(?:order|invoice|tracking|account|acct|ref(?:erence)?|ticket|id|no\.?|number|#)"
    r"\s*[:#]?\s*$"
)


@FUZZ
@given(
    st.lists(
        st.sampled_from(["order", "ID", "no.", "#", ":", " ", "\n", "ref", "card", "x", "\u212a"]),
        max_size=6,
    ).map("".join)
)
def test_a_card_is_not_one_after_the_words_of_an_order_number(before: str) -> None:
    """The module tests the words on the reversed text; the forward regex is the reference."""
    text = before + " 4111111111111111"
    start = len(before) + 1
    window = text[max(0, start - 24) : start]
    rejected = NOT_A_CARD_BEFORE.search(window) and "card" not in text[:start][-40:].lower()
    assert found(text) == ([] if rejected else [("CREDIT_CARD", "4111111111111111")])
