"""PII and secrets in prompts and responses: spans, types, leaks, and redaction.

Each type is a compiled pattern plus a validation hook that cuts false positives (Luhn and card
brand ranges, SSN area/group/serial rules, IBAN mod-97, real IP addresses, phone number shape).
Prompt and response are scanned separately; PII in the response that the prompt does not
contain is a *leak*. ``redact`` replaces spans with typed placeholders before persistence.

Work is linear in the text and bounded per text: a scan stops at ``MAX_SCAN_CHARS`` characters
or after ``MAX_MATCHES`` matches, and then ends with one ``UNSCANNED`` match covering the rest of
the text, so the rest is masked by ``redact`` like any span (never stored unredacted) and the
finding says ``truncated``.
"""

from __future__ import annotations

import ipaddress
import operator
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
    # Not PII: the tail of a text past the scan bound, masked whole because it was not scanned.
    UNSCANNED = "UNSCANNED"


SCANNABLE_TYPES: Final = frozenset(t for t in PiiType if t is not PiiType.UNSCANNED)

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
        resolved = PiiType(upper)
    except ValueError:
        return None
    return resolved if resolved in SCANNABLE_TYPES else None


@dataclass(frozen=True, slots=True)
class PiiMatch:
    """One validated PII span in one text; ``subtype`` says which pattern (e.g. aws_access_key).
    An ``UNSCANNED`` match has an empty ``value``: it only marks where masking starts."""

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


# Letters as their mod-97 numbers (A=10 ... Z=35), for str.translate.
_IBAN_LETTERS: Final = str.maketrans({chr(ord("A") + i): str(10 + i) for i in range(26)})


def _validate_iban(value: str, text: str, start: int) -> str | None:
    # The mod-97 checksum first, at C speed: python-stdnum checks it too, but after a slow
    # clean-up, and a long run of IBAN-like groups tries up to 8 shrunk values per candidate.
    compact = value.replace(" ", "").upper()
    if int((compact[4:] + compact[:4]).translate(_IBAN_LETTERS)) % 97 != 1:
        return None
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
            # the body stops at the next BEGIN: a header with no END then costs the distance to
            # the next header, not the rest of the text (thousands of headers were quadratic)
            r"(?:(?:(?!-----BEGIN )[\s\S])*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----)?"
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
_TEXT_KEYED: Final = (PiiType.EMAIL, PiiType.SECRET, PiiType.IBAN, PiiType.IP_ADDRESS)
_CUT_LOOKBACK: Final = 256  # how far back from the length bound a scan looks for whitespace
# Past a stop position a pattern reads this far more: longer than any bounded-length candidate
# with its look-ahead, so a candidate that starts before the stop is read whole.
_STOP_MARGIN: Final = 1_024
_START: Final = operator.attrgetter("start")


def _prefilter(pattern: PiiPattern) -> re.Pattern[str] | None:
    """One literal alternation per pattern: far cheaper than a Python loop of ``in`` tests."""
    parts = [re.escape(r) for r in pattern.requires]
    parts += [f"(?i:{re.escape(r)})" for r in pattern.requires_lower]
    return re.compile("|".join(parts)) if parts else None


class PiiScanner:
    """Finds validated PII spans in a text. Knobs are class constants the constructor overrides.

    ``MAX_SCAN_CHARS`` bounds the regex and validator work per text and ``MAX_MATCHES`` the
    spans a finding carries; past either bound the scan ends with one ``UNSCANNED`` match.
    """

    PATTERNS: ClassVar[tuple[PiiPattern, ...]] = DEFAULT_PATTERNS
    MAX_SCAN_CHARS: ClassVar[int] = 262_144
    MAX_MATCHES: ClassVar[int] = 1_000

    def __init__(
        self,
        types: Iterable[PiiType | str] | None = None,
        *,
        max_scan_chars: int | None = None,
        max_matches: int | None = None,
    ) -> None:
        if types is None:
            self.types = frozenset(PiiType)
        else:
            chosen = set()
            for name in types:
                resolved = normalise_type(str(name))
                if resolved is None:
                    valid = ", ".join(t.value for t in PiiType if t in SCANNABLE_TYPES)
                    raise ValueError(f"unknown PII type {name!r}; valid types: {valid}")
                chosen.add(resolved)
            self.types = frozenset(chosen)
        self.max_scan_chars = self.MAX_SCAN_CHARS if max_scan_chars is None else max_scan_chars
        self.max_matches = self.MAX_MATCHES if max_matches is None else max_matches
        if self.max_scan_chars < 1 or self.max_matches < 1:
            raise ValueError("max_scan_chars and max_matches must be at least 1")
        self._plan = tuple(
            (pattern, _prefilter(pattern))
            for pattern in self.PATTERNS
            if pattern.type in self.types
        )

    def scan(self, text: str) -> list[PiiMatch]:
        """Every non-overlapping validated match, in text order, at most ``max_matches`` of them;
        when a bound stopped the scan, a last ``UNSCANNED`` match covers the rest of the text."""
        if not text:
            return []
        limit = len(text) if len(text) <= self.max_scan_chars else self._scan_limit(text)
        found = self._find(text, limit)
        cut = limit
        if len(found) > self.max_matches:
            cut = found[self.max_matches].start
            del found[self.max_matches :]
        if cut < len(text):
            found.append(PiiMatch(cut, len(text), PiiType.UNSCANNED, "unscanned", ""))
        return found

    def _scan_limit(self, text: str) -> int:
        """Where scanning a text longer than ``max_scan_chars`` stops: just after the last
        whitespace before the bound, so that no token is split between the scanned part and the
        masked tail (at the bound itself when there is none nearby)."""
        limit = self.max_scan_chars
        lo = max(0, limit - _CUT_LOOKBACK)
        space = max(text.rfind(c, lo, limit) for c in " \t\r\n")
        return space + 1 if space >= 0 else limit

    def _find(self, text: str, limit: int) -> list[PiiMatch]:
        """Patterns in priority order over ``text[:limit]``, each one's validated matches that
        overlap no earlier one merged into a sorted list: linear in the text and the matches.

        Candidates come in text order, so one cursor walks the earlier matches once. After
        ``max_matches + 1`` matches a pattern stops, and later patterns read only a margin past
        that position: a match starting there lies past the cut ``scan`` makes anyway. A
        candidate longer than the margin (a secret) is read short: it still overlaps the match
        at the stop and is dropped, or at worst a shorter match of it adds a span.
        """
        has_digit = _HAS_DIGIT.search(text, 0, limit) is not None
        taken: list[PiiMatch] = []
        stop, most = limit, self.max_matches
        for pattern, prefilter in self._plan:
            if prefilter is not None and prefilter.search(text, 0, limit) is None:
                continue
            if not has_digit and pattern.type not in (PiiType.EMAIL, PiiType.SECRET):
                continue
            new: list[PiiMatch] = []
            cursor, earlier = 0, len(taken)
            endpos = limit if stop == limit else min(limit, stop + _STOP_MARGIN)
            for m in pattern.regex.finditer(text, 0, endpos):
                group = 1 if m.re.groups and m.group(1) and pattern.type is PiiType.SECRET else 0
                start, end = m.span(group)
                if start >= stop:
                    break
                while cursor < earlier and taken[cursor].end <= start:
                    cursor += 1
                if cursor < earlier and taken[cursor].start < end:
                    continue
                match = self._validated(pattern, m.group(group), text, start)
                if match is not None:
                    new.append(match)
                    if len(new) > most:
                        stop = start
                        break
            if new:  # two sorted runs: Timsort merges them in linear time
                taken += new
                taken.sort(key=_START)
        return taken

    @staticmethod
    def _validated(pattern: PiiPattern, value: str, text: str, start: int) -> PiiMatch | None:
        """The match for a candidate that passes validation, shrunk when the pattern allows."""
        validate = pattern.validate
        subtype = pattern.subtype if validate is None else validate(value, text, start)
        while subtype is None and validate is not None and pattern.shrink and " " in value:
            value = value.rsplit(" ", 1)[0]
            subtype = validate(value, text, start)
        if subtype is None:
            return None
        return PiiMatch(start, start + len(value), pattern.type, subtype, value)


def redact(text: str, matches: Sequence[PiiMatch]) -> str:
    """Replace each span with a typed placeholder such as ``<EMAIL>``; spans must not overlap.
    An ``UNSCANNED`` span becomes ``<UNSCANNED>``: the unscanned tail is never kept."""
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


class PromptLookup:
    """Whether the prompt contained a response value: the prompt's own match keys first (a set
    lookup), else a substring search of the whole prompt, once per distinct value.

    The searches share a budget of ``budget_chars`` characters, so one finding costs at most
    that much however many values a response holds; a value left unsearched counts as present
    (not a leak) and ``exhausted`` says the check was partial.
    """

    def __init__(self, prompt: str, prompt_matches: Iterable[PiiMatch], budget_chars: int) -> None:
        self.keys = {m.key for m in prompt_matches if m.type is not PiiType.UNSCANNED}
        self.budget_chars = budget_chars
        self.exhausted = False
        self._prompt = prompt
        self._lower: str | None = None
        self._digits: str | None = None
        self._seen: dict[tuple[bool, str], bool] = {}

    def contains(self, match: PiiMatch) -> bool:
        """True when the prompt holds ``match`` (same key, or the same text/digits anywhere)."""
        key = match.key
        if key in self.keys:
            return True
        textual = match.type in _TEXT_KEYED
        needle = match.value.lower() if textual else key
        if not textual and len(needle) < 7:
            return False
        if (textual, needle) in self._seen:
            return self._seen[(textual, needle)]
        haystack = self._haystack(textual)
        if len(haystack) > self.budget_chars:
            self.exhausted = True
            return True
        self.budget_chars -= len(haystack)
        found = needle in haystack
        self._seen[(textual, needle)] = found
        return found

    def _haystack(self, textual: bool) -> str:
        """The lowercased prompt, or its digits alone; each built once, when first needed."""
        if textual:
            if self._lower is None:
                self._lower = self._prompt.lower()
            return self._lower
        if self._digits is None:
            self._digits = re.sub(r"\D", "", self._prompt)
        return self._digits


class PiiDetector:
    """Scores events for PII; a response span the prompt did not contain is a leak (flagged)."""

    name = "pii"
    version = "1.1.0"  # 1.1: bounded scan (UNSCANNED tail, truncated details)
    # Characters of prompt searched per finding to tell leaks from echoes (~10 ms of search).
    LEAK_SEARCH_CHARS: ClassVar[int] = 32_000_000

    def __init__(
        self, scanner: PiiScanner | None = None, *, leak_search_chars: int | None = None
    ) -> None:
        self.scanner = scanner or PiiScanner()
        self.leak_search_chars = (
            self.LEAK_SEARCH_CHARS if leak_search_chars is None else leak_search_chars
        )

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
        lookup = PromptLookup(prompt, prompt_matches, self.leak_search_chars)
        leaked = _leaked_types(response_matches, lookup)
        pii = [m for m in (*prompt_matches, *response_matches) if m.type is not PiiType.UNSCANNED]
        secrets = any(m.type is PiiType.SECRET for m in pii)
        spans = tuple(
            [Span(m.start, m.end, m.type.value, "prompt") for m in prompt_matches]
            + [Span(m.start, m.end, m.type.value, "response") for m in response_matches]
        )
        category = "leak" if leaked else ("secret" if secrets else ("pii" if pii else "truncated"))
        details = {
            "prompt_types": _type_list(prompt_matches),
            "response_types": _type_list(response_matches),
            "leaked_types": ",".join(sorted(leaked)),
        }
        truncated = [
            field
            for field, matches in (("prompt", prompt_matches), ("response", response_matches))
            if matches and matches[-1].type is PiiType.UNSCANNED
        ]
        if truncated:
            details["truncated"] = "true"
            details["truncated_fields"] = ",".join(truncated)
        if lookup.exhausted:
            details["leak_check_truncated"] = "true"
        return Finding(
            request_id=request_id,
            detector=self.name,
            detector_version=self.version,
            score=1.0 if leaked or secrets else (0.5 if pii else 0.0),
            flagged=bool(leaked or secrets),
            category=category,
            spans=spans,
            details=details,
        )


def _leaked_types(response_matches: Iterable[PiiMatch], lookup: PromptLookup) -> set[str]:
    """Types with at least one response value the prompt did not contain. Once a type has one,
    its other values are not searched: the finding only reports leaked types."""
    leaked: set[str] = set()
    for match in response_matches:
        if match.type is PiiType.UNSCANNED or match.type.value in leaked:
            continue
        if not lookup.contains(match):
            leaked.add(match.type.value)
    return leaked


def _type_list(matches: Iterable[PiiMatch]) -> str:
    return ",".join(sorted({m.type.value for m in matches if m.type is not PiiType.UNSCANNED}))
