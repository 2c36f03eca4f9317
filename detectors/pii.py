"""PII and secrets in prompts and responses: spans, types, leaks, and redaction.

Each type is a compiled pattern plus a validation hook that cuts false positives (Luhn and card
brand ranges, SSN area/group/serial rules, IBAN mod-97, real IP addresses, phone number shape).
Prompt and response are scanned separately; PII in the response that the prompt does not
contain is a *leak*. ``redact`` replaces spans with typed placeholders before persistence.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Final

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.us import ssn as stdnum_ssn

from detectors.base import Finding, Span
from monitor.ingest.events import Event


class PiiType(StrEnum):
    EMAIL = "EMAIL"
    PHONE = "PHONE"
    CREDIT_CARD = "CREDIT_CARD"
    US_SSN = "US_SSN"
    IBAN = "IBAN"
    IP_ADDRESS = "IP_ADDRESS"
    SECRET = "SECRET"  # noqa: S105 - a type name, not a credential


# Presidio's entity names → ours, so evaluation files from either world can be scored.
PRESIDIO_TYPES: Final[dict[str, PiiType]] = {
    "EMAIL_ADDRESS": PiiType.EMAIL,
    "PHONE_NUMBER": PiiType.PHONE,
    "CREDIT_CARD": PiiType.CREDIT_CARD,
    "US_SSN": PiiType.US_SSN,
    "IBAN_CODE": PiiType.IBAN,
    "IP_ADDRESS": PiiType.IP_ADDRESS,
}


def normalise_type(name: str) -> PiiType | None:
    """Map a project or Presidio type name to a PiiType; None when we do not cover it."""
    upper = name.upper()
    if upper in PRESIDIO_TYPES:
        return PRESIDIO_TYPES[upper]
    try:
        return PiiType(upper)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class PiiMatch:
    """One validated PII span in one text; ``subtype`` says which pattern (e.g. aws_access_key)."""

    start: int
    end: int
    type: PiiType
    subtype: str
    value: str

    @property
    def key(self) -> str:
        """A normalised value used to tell whether the prompt already contained it."""
        if self.type in (PiiType.EMAIL, PiiType.SECRET, PiiType.IBAN, PiiType.IP_ADDRESS):
            return self.value.replace(" ", "").lower()
        return re.sub(r"\D", "", self.value)


Validator = Callable[[str, str, int], "str | None"]


@dataclass(frozen=True)
class PiiPattern:
    """A compiled pattern, the type it finds, and a hook returning the subtype or None to reject."""

    type: PiiType
    subtype: str
    regex: re.Pattern[str]
    validate: Validator | None = None
    requires: tuple[str, ...] = ()  # cheap prefilter: skip the regex unless one is in the text
    requires_lower: tuple[str, ...] = ()  # the same, ignoring case
    shrink: bool = False  # on a failed validation, retry without the last space-separated group


# --- validators -----------------------------------------------------------------------------

_CARD_BRANDS: Final[tuple[tuple[str, tuple[int, ...], Callable[[str], bool]], ...]] = (
    ("visa", (13, 16, 19), lambda d: d[0] == "4"),
    ("mastercard", (16,), lambda d: 51 <= int(d[:2]) <= 55 or 2221 <= int(d[:4]) <= 2720),
    ("amex", (15,), lambda d: d[:2] in ("34", "37")),
    (
        "discover",
        (16, 17, 18, 19),
        lambda d: d.startswith("6011") or d.startswith("65") or 644 <= int(d[:3]) <= 649,
    ),
    ("jcb", (16, 17, 18, 19), lambda d: d[:2] == "35"),
    ("jcb", (15,), lambda d: d[:4] in ("1800", "2131")),
    (
        "diners",
        (14, 15, 16, 17, 18, 19),
        lambda d: 300 <= int(d[:3]) <= 305 or d[:2] in ("36", "38", "39"),
    ),
    ("unionpay", (16, 17, 18, 19), lambda d: d[:2] == "62"),
    (
        "maestro",
        tuple(range(12, 20)),
        lambda d: d[:2] in ("50", "56", "57", "58") or d[0] == "6" or d[:4] == "0604",
    ),
)

# Words just before a number that say it is not a card: cuts order-id false positives.
_NOT_A_CARD_CONTEXT: Final = re.compile(
    r"(?i)(?:order|invoice|tracking|account|acct|ref(?:erence)?|ticket|id|no\.?|number|#)\s*[:#]?\s*$"
)


def card_brand(digits: str) -> str | None:
    """The card brand whose prefix and length match, or None."""
    for brand, lengths, prefix_ok in _CARD_BRANDS:
        if len(digits) in lengths and prefix_ok(digits):
            return brand
    return None


def _validate_card(value: str, text: str, start: int) -> str | None:
    digits = re.sub(r"[ -]", "", value)
    if not luhn.is_valid(digits) or len(set(digits)) == 1:
        return None
    brand = card_brand(digits)
    if brand is None:
        return None
    if (
        _NOT_A_CARD_CONTEXT.search(text[max(0, start - 24) : start])
        and "card" not in text[max(0, start - 40) : start].lower()
    ):
        return None
    return brand


def _validate_ssn(value: str, text: str, start: int) -> str | None:
    return "us_ssn" if stdnum_ssn.is_valid(value) else None


_SSN_CONTEXT: Final = re.compile(r"(?i)(?:ssn|social\s+security(?:\s+(?:no|number|#))?)\W{0,4}$")


def _validate_bare_ssn(value: str, text: str, start: int) -> str | None:
    if not _SSN_CONTEXT.search(text[max(0, start - 30) : start]):
        return None
    return _validate_ssn(value, text, start)


def _validate_iban(value: str, text: str, start: int) -> str | None:
    return "iban" if stdnum_iban.is_valid(value) else None


def _validate_ipv4(value: str, text: str, start: int) -> str | None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return None
    return "ipv4"


def _validate_ipv6(value: str, text: str, start: int) -> str | None:
    if value.count(":") < 2 or sum(c not in ":" for c in value) < 3:
        return None
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return None
    return "ipv6"


_DATE_LIKE: Final = re.compile(
    r"\d{4}-\d{1,2}-\d{1,2}|^\d{1,2}[-./ ]\d{1,2}[-./ ]\d{2,4}$|^(?:19|20)\d\d[-–](?:19|20)\d\d$"
)
_SSN_SHAPE: Final = re.compile(r"^\d{3}([- ])\d{2}\1\d{4}$")  # an invalid SSN is not a phone
_IBAN_PREFIX_BEFORE: Final = re.compile(r"(?i)\b[a-z]{2}\d{2}(?: [a-z0-9]{4})+ $")
_POSTAL_LIKE: Final = re.compile(r"^\d{4}-\d{3}$|^\d{5}-\d{4}$")
_STREET_AFTER: Final = re.compile(
    r"^,?\s+(?:[A-Za-z][\w'.-]*\s+){0,3}(?i:street|st|avenue|ave|road|rd|drive|dr|lane|ln|blvd|"
    r"boulevard|way|court|ct|place|pl|terrace|circle|suite|parkway|pkwy|highway|hwy|u|close|str)\b"
    r"|^\s+(?i:rue|via|calle|avenida|strasse|straße)\b"
)
_ADDRESS_BEFORE: Final = re.compile(
    r"(?i)\b(?:at|address|lives|located|zip|postal|post code|postcode|code)\b[:\s]*$"
)
_UNIT_BEFORE: Final = re.compile(r"(?i)(?:apt|suite|unit|ste|box|no)\.?\s*$")
_PHONE_CONTEXT: Final = re.compile(
    r"(?i)phone|tel\b|mobile|cell|fax|call|contact|whatsapp|sms|text|office|desk|number"
)


def _validate_phone(value: str, text: str, start: int) -> str | None:
    body = re.split(r"(?i)\s*(?:x|ext\.?|#)\s*\d+$", value)[0]
    digits = re.sub(r"\D", "", body)
    if not 7 <= len(digits) <= 15 or len(set(digits)) <= 2:
        return None
    if _DATE_LIKE.search(body) or _POSTAL_LIKE.match(body) or _SSN_SHAPE.match(body):
        return None
    if _IBAN_PREFIX_BEFORE.search(text[max(0, start - 40) : start]):
        return None
    end = start + len(value)
    if _STREET_AFTER.match(text[end : end + 40]) or _UNIT_BEFORE.search(
        text[max(0, start - 8) : start]
    ):
        return None
    two_groups = re.fullmatch(r"\d+[ .-]\d+", body) is not None
    if two_groups and _ADDRESS_BEFORE.search(text[max(0, start - 24) : start]):
        return None
    if body.startswith("+"):
        try:
            number = phonenumbers.parse(body, None)
        except phonenumbers.NumberParseException:
            return None
        return "international" if phonenumbers.is_possible_number(number) else None
    if body.isdigit():  # a bare digit run is a phone when valid, or when the context says so
        try:
            valid = phonenumbers.is_valid_number(phonenumbers.parse(body, "US"))
        except phonenumbers.NumberParseException:
            valid = False
        if valid or _PHONE_CONTEXT.search(text[max(0, start - 30) : end + 12]):
            return "national"
        return None
    return "national"


# --- patterns ------------------------------------------------------------------------------
# Patterns start with a literal or a character class, and check what precedes it with a
# lookbehind *after* it: Python's `re` only uses its fast first-character scan when a pattern
# begins that way, which makes these scans 2-4x faster than a leading lookbehind.

_SECRET_PATTERNS: Final = (
    PiiPattern(
        PiiType.SECRET,
        "private_key",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
            r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----)?"
        ),
        requires=("PRIVATE KEY",),
    ),
    PiiPattern(
        PiiType.SECRET,
        "aws_access_key",
        re.compile(r"A(?<![A-Z0-9]A)(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Z0-9])"),
        requires=("AKIA", "ASIA", "ABIA", "ACCA"),
    ),
    PiiPattern(
        PiiType.SECRET,
        "aws_secret_key",
        re.compile(r"(?i)(?<=aws_secret_access_key)\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})"),
        requires_lower=("aws_secret_access_key",),
    ),
    PiiPattern(
        PiiType.SECRET,
        "jwt",
        re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
        requires=("eyJ",),
    ),
    PiiPattern(
        PiiType.SECRET,
        "bearer_token",
        re.compile(r"(?i:\bbearer)\s+([A-Za-z0-9\-._~+/]{20,}=*)"),
        requires_lower=("bearer",),
    ),
    PiiPattern(
        PiiType.SECRET,
        "api_key",
        re.compile(
            r"(?<![\w-])(?:sk-(?:proj-|ant-(?:api\d\d-)?|live-)?[A-Za-z0-9_-]{20,}"
            r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"
            r"|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,}"
            r"|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}"
            r"|glpat-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,}|npm_[A-Za-z0-9]{36})"
        ),
        requires=("sk", "rk_", "gh", "github_pat_", "xox", "AIza", "glpat-", "hf_", "npm_"),
    ),
)

_EMAIL: Final = PiiPattern(
    PiiType.EMAIL,
    "email",
    re.compile(
        r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
        r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
    ),
    requires=("@",),
)

_IBAN: Final = PiiPattern(
    PiiType.IBAN,
    "iban",
    re.compile(
        r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}"
        r"(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,4})?)(?![A-Za-z0-9])"
    ),
    _validate_iban,
    shrink=True,
)

_CARD: Final = PiiPattern(
    PiiType.CREDIT_CARD,
    "credit_card",
    re.compile(
        r"\d(?<![\d.-]\d)(?:\d{11,18}"
        r"|\d{3}([ -])\d{4}\1\d{4}\1\d{1,7}"  # 4-4-4-4(-3) groups
        r"|\d{3}([ -])\d{6}\2\d{4,5})(?![\d])"  # Amex / Diners 4-6-5 groups
    ),
    _validate_card,
)

_SSN: Final = PiiPattern(
    PiiType.US_SSN,
    "us_ssn",
    re.compile(r"\d(?<![\d-]\d)\d{2}([- ])\d{2}\1\d{4}(?![\d-])"),
    _validate_ssn,
)

_BARE_SSN: Final = PiiPattern(
    PiiType.US_SSN,
    "us_ssn",
    re.compile(r"(?<!\d)\d{9}(?!\d)"),
    _validate_bare_ssn,
    requires_lower=("ssn", "social"),
)

_IPV4: Final = PiiPattern(
    PiiType.IP_ADDRESS,
    "ipv4",
    re.compile(r"\d(?<![\d.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?!\d|\.\d)"),
    _validate_ipv4,
    requires=(".",),
)

_IPV6: Final = PiiPattern(
    PiiType.IP_ADDRESS,
    "ipv6",
    re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"),
    _validate_ipv6,
    requires=(":",),
)

_PHONE: Final = PiiPattern(
    PiiType.PHONE,
    "phone",
    re.compile(
        r"(?=[+(\d])(?<![\w+/.-])"
        r"(?:\+\d{1,3}[ .-]?)?(?:\(0\) ?)?(?:\(\d{1,5}\)[ .-]?)?"
        r"\d{1,5}(?:[ .-]\d{1,5}){0,4}[ .-]\d{1,8}"
        r"(?:(?:x|ext\.? ?)\d{1,6})?"
        r"(?!\w|-\d|\.\d)"
        r"|(?=[+\d])(?<![\w+])\+?\d{10,13}(?!\w)"
    ),
    _validate_phone,
)

# Resolution order when spans overlap: earlier wins.
DEFAULT_PATTERNS: Final[tuple[PiiPattern, ...]] = (
    *_SECRET_PATTERNS,
    _EMAIL,
    _IBAN,
    _CARD,
    _SSN,
    _BARE_SSN,
    _IPV4,
    _IPV6,
    _PHONE,
)

_HAS_DIGIT: Final = re.compile(r"\d")


def _prefilter(pattern: PiiPattern) -> re.Pattern[str] | None:
    """One literal alternation per pattern: far cheaper than a Python loop of ``in`` tests."""
    parts = [re.escape(r) for r in pattern.requires]
    parts += [f"(?i:{re.escape(r)})" for r in pattern.requires_lower]
    return re.compile("|".join(parts)) if parts else None


class PiiScanner:
    """Finds validated PII spans in a text. Knobs are class constants the constructor overrides."""

    PATTERNS: ClassVar[tuple[PiiPattern, ...]] = DEFAULT_PATTERNS

    def __init__(self, types: Iterable[PiiType | str] | None = None) -> None:
        if types is None:
            self.types = frozenset(PiiType)
        else:
            chosen = set()
            for name in types:
                resolved = normalise_type(str(name))
                if resolved is None:
                    valid = ", ".join(t.value for t in PiiType)
                    raise ValueError(f"unknown PII type {name!r}; valid types: {valid}")
                chosen.add(resolved)
            self.types = frozenset(chosen)
        self._plan = tuple(
            (pattern, _prefilter(pattern))
            for pattern in self.PATTERNS
            if pattern.type in self.types
        )

    def scan(self, text: str) -> list[PiiMatch]:
        """Every non-overlapping validated match, in text order."""
        if not text:
            return []
        has_digit = _HAS_DIGIT.search(text) is not None
        found: list[PiiMatch] = []
        taken: list[tuple[int, int]] = []
        for pattern, prefilter in self._plan:
            if prefilter is not None and prefilter.search(text) is None:
                continue
            if not has_digit and pattern.type not in (PiiType.EMAIL, PiiType.SECRET):
                continue
            for m in pattern.regex.finditer(text):
                group = 1 if m.re.groups and m.group(1) and pattern.type is PiiType.SECRET else 0
                start, end = m.span(group)
                if any(start < t_end and t_start < end for t_start, t_end in taken):
                    continue
                value = m.group(group)
                subtype = self._validate(pattern, value, text, start)
                while subtype is None and pattern.shrink and " " in value:
                    value = value.rsplit(" ", 1)[0]
                    subtype = self._validate(pattern, value, text, start)
                if subtype is None:
                    continue
                end = start + len(value)
                found.append(PiiMatch(start, end, pattern.type, subtype, value))
                taken.append((start, end))
        found.sort(key=lambda match: match.start)
        return found

    @staticmethod
    def _validate(pattern: PiiPattern, value: str, text: str, start: int) -> str | None:
        if pattern.validate is None:
            return pattern.subtype
        return pattern.validate(value, text, start)


def redact(text: str, matches: Sequence[PiiMatch]) -> str:
    """Replace each span with a typed placeholder such as ``<EMAIL>``; spans must not overlap."""
    if not matches:
        return text
    parts: list[str] = []
    cursor = 0
    for match in sorted(matches, key=lambda m: m.start):
        parts.append(text[cursor : match.start])
        parts.append(f"<{match.type.value}>")
        cursor = match.end
    parts.append(text[cursor:])
    return "".join(parts)


class PiiDetector:
    """Scores events for PII; a response span the prompt did not contain is a leak (flagged)."""

    name = "pii"
    version = "1.0.0"

    def __init__(self, scanner: PiiScanner | None = None) -> None:
        self.scanner = scanner or PiiScanner()

    def score(self, batch: Sequence[Event]) -> list[Finding]:
        findings: list[Finding] = []
        for event in batch:
            finding = self.score_texts(event.request_id, event.prompt_text, event.response or "")
            if finding is not None:
                findings.append(finding)
        return findings

    def score_texts(self, request_id: str, prompt: str, response: str) -> Finding | None:
        prompt_matches = self.scanner.scan(prompt)
        response_matches = self.scanner.scan(response)
        if not prompt_matches and not response_matches:
            return None
        prompt_keys = {m.key for m in prompt_matches}
        prompt_digits = re.sub(r"\D", "", prompt)
        prompt_lower = prompt.lower()
        leaked = [
            m
            for m in response_matches
            if m.key not in prompt_keys and not _appears_in(m, prompt_lower, prompt_digits)
        ]
        secrets = [m for m in (*prompt_matches, *response_matches) if m.type is PiiType.SECRET]
        spans = tuple(
            [Span(m.start, m.end, m.type.value, "prompt") for m in prompt_matches]
            + [Span(m.start, m.end, m.type.value, "response") for m in response_matches]
        )
        category = "leak" if leaked else ("secret" if secrets else "pii")
        return Finding(
            request_id=request_id,
            detector=self.name,
            detector_version=self.version,
            score=1.0 if leaked or secrets else 0.5,
            flagged=bool(leaked or secrets),
            category=category,
            spans=spans,
            details={
                "prompt_types": _type_list(prompt_matches),
                "response_types": _type_list(response_matches),
                "leaked_types": _type_list(leaked),
            },
        )


def _appears_in(match: PiiMatch, prompt_lower: str, prompt_digits: str) -> bool:
    if match.type in (PiiType.EMAIL, PiiType.SECRET, PiiType.IBAN, PiiType.IP_ADDRESS):
        return match.value.lower() in prompt_lower
    key = match.key
    return len(key) >= 7 and key in prompt_digits


def _type_list(matches: Iterable[PiiMatch]) -> str:
    return ",".join(sorted({m.type.value for m in matches}))
