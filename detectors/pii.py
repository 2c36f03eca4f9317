"""PII and secrets in prompts and responses: spans, types, leaks, and redaction.

Each type is a compiled pattern plus a validation hook that cuts false positives (Luhn and card
brand ranges, SSN area/group/serial rules, IBAN mod-97, real IP addresses, phone number shape).
Prompt and response are scanned separately; PII in the response that the prompt does not
contain is a *leak*. ``redact`` replaces spans with typed placeholders before persistence.

Work is linear in the text and bounded per text: a scan stops at ``MAX_SCAN_CHARS`` characters
or after ``MAX_MATCHES`` matches, and then ends with one ``UNSCANNED`` match covering the rest of
the text, so the rest is masked by ``redact`` like any span (never stored unredacted) and the
finding says ``truncated``.

A scan is built for speed (microseconds for a short text): cheap prefilters first (the first digit,
one search for every other anchor, a few words) skip the patterns a text cannot match, and the
patterns that start at a run of digits (IBAN, card, SSN, IPv4, phone) are found together, in
one pass of one combined regex; each type's candidates and resolution are the same as if every
pattern ran on its own. Validators run their cheap checks first.
"""

from __future__ import annotations

import ipaddress
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Final, NamedTuple

import phonenumbers
from stdnum import iban as stdnum_iban
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
    """A compiled pattern, the type it finds, and a hook returning the subtype or None to reject.

    Prefilters skip the regex on texts it cannot match. ``anchor``: a regex that occurs in every
    text the pattern matches, quick to find (a literal, or one that starts with a rare
    character). ``lead``: when set, every match of the regex starts at most this many
    characters before an occurrence of the anchor, so the regex reads the text from ``lead``
    characters before the anchor's first occurrence. ``requires_lower``: words one of which
    must occur, ignoring case.

    ``back``: the regex matches from this many characters into the value, and checks those
    with a look-behind (so that it can start with a rare character).

    ``head``: when set, the regex is this character class followed by the rest; the class's
    character is a digit or one character before one, and never right after a digit; groups
    are named and referred to by name. The scanner finds all such patterns in one pass over the
    runs of digits in a text (``_DigitRuns``).
    """

    type: PiiType
    subtype: str
    regex: re.Pattern[str]
    validate: Validator | None = None
    anchor: str = ""
    lead: int | None = None
    back: int = 0
    head: str = ""
    requires_lower: tuple[str, ...] = ()
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

# Words just before a number that say it is not a card: cuts order-id false positives. The text
# before the number must end with one, then \s*[:#]?\s*: tested as a match at the start of that
# text reversed, where a search for "(?:order|...)\s*[:#]?\s*$" tries every position.
_NOT_A_CARD_WORDS: Final = (
    "order", "invoice", "tracking", "account", "acct", "ref", "reference", "ticket", "id", "no",
    "no.", "number", "#",
)  # fmt: skip
_NOT_A_CARD_BEFORE_REVERSED: Final = re.compile(
    r"(?i)\s*[:#]?\s*(?:" + "|".join(re.escape(word[::-1]) for word in _NOT_A_CARD_WORDS) + ")"
)


# The brands that allow each number length, in the table's order.
_BRANDS_BY_LENGTH: Final = {
    n: tuple((brand, prefix_ok) for brand, lengths, prefix_ok in _CARD_BRANDS if n in lengths)
    for n in sorted({n for _, lengths, _ in _CARD_BRANDS for n in lengths})
}
# Luhn doubles every second digit from the right and sums the digits of the double: as tables
# from ASCII digits to those values, for bytes.translate.
_LUHN_SINGLE: Final = bytes.maketrans(b"0123456789", bytes((0, 1, 2, 3, 4, 5, 6, 7, 8, 9)))
_LUHN_DOUBLED: Final = bytes.maketrans(b"0123456789", bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))


def card_brand(digits: str) -> str | None:
    """The card brand whose prefix and length match, or None."""
    for brand, prefix_ok in _BRANDS_BY_LENGTH.get(len(digits), ()):
        if prefix_ok(digits):
            return brand
    return None


def luhn_valid(digits: str) -> bool:
    """Whether ASCII digits pass the Luhn checksum (as ``stdnum.luhn.is_valid``, faster)."""
    if not (digits.isascii() and digits.isdigit()):
        return False
    raw = digits.encode()
    total = sum(raw[-1::-2].translate(_LUHN_SINGLE)) + sum(raw[-2::-2].translate(_LUHN_DOUBLED))
    return total % 10 == 0


def _validate_card(value: str, text: str, start: int) -> str | None:
    digits = value.replace(" ", "").replace("-", "")
    brand = card_brand(digits)  # the cheap checks first
    if brand is None or len(set(digits)) == 1 or not luhn_valid(digits):
        return None
    if (
        _NOT_A_CARD_BEFORE_REVERSED.match(text[max(0, start - 24) : start][::-1])
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


_PHONE_EXTENSION: Final = re.compile(r"(?i)\s*(?:x|ext\.?|#)\s*\d+$")
_NON_DIGIT: Final = re.compile(r"\D")
_TWO_GROUPS: Final = re.compile(r"\d+[ .-]\d+")


def _validate_phone(value: str, text: str, start: int) -> str | None:
    """Cheap checks first (digit count, shape), then the context around the candidate, and
    ``phonenumbers`` last, only for what is left: a ``+`` number or a bare run of digits."""
    body = value
    if "x" in value or "X" in value or "#" in value:  # only then can it have an extension
        extension = _PHONE_EXTENSION.search(value)
        if extension is not None:
            body = value[: extension.start()]
    digits = _NON_DIGIT.sub("", body)
    if not 7 <= len(digits) <= 15 or len(set(digits)) <= 2:
        return None
    if _DATE_LIKE.search(body) or _POSTAL_LIKE.match(body) or _SSN_SHAPE.match(body):
        return None
    before = text[max(0, start - 40) : start]
    if before.endswith((" ", " \n")) and _IBAN_PREFIX_BEFORE.search(before):
        return None
    end = start + len(value)
    if _STREET_AFTER.match(text[end : end + 40]) or _UNIT_BEFORE.search(
        text[max(0, start - 8) : start]
    ):
        return None
    two_groups = _TWO_GROUPS.fullmatch(body) is not None
    if two_groups and _ADDRESS_BEFORE.search(text[max(0, start - 24) : start]):
        return None
    if body.startswith("+"):
        try:
            number = phonenumbers.parse(body, None)
        except phonenumbers.NumberParseException:
            return None
        return "international" if phonenumbers.is_possible_number(number) else None
    if body.isdigit():  # a bare digit run is a phone when the context says so, or when valid
        if _PHONE_CONTEXT.search(text[max(0, start - 30) : end + 12]):
            return "national"
        try:
            valid = phonenumbers.is_valid_number(phonenumbers.parse(body, "US"))
        except phonenumbers.NumberParseException:
            valid = False
        return "national" if valid else None
    return "national"


# --- patterns ------------------------------------------------------------------------------

_DIGIT: Final = r"\d"  # the anchor of every type but EMAIL and SECRET
# Patterns start with a literal or a character class, and check what precedes it with a
# lookbehind *after* it: Python's `re` only uses its fast first-character scan when a pattern
# begins that way, which makes these scans 2-4x faster than a leading lookbehind. Patterns that
# cannot begin that way (a leading lookbehind) have an anchor and a lead, so that they read the
# text only from near the anchor's first occurrence.

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
        anchor="PRIVATE KEY",
    ),
    PiiPattern(
        PiiType.SECRET,
        "aws_access_key",
        re.compile(r"A(?<![A-Z0-9]A)(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Z0-9])"),
        anchor="A(?:KIA|SIA|BIA|CCA)",
        lead=0,
    ),
    PiiPattern(
        PiiType.SECRET,
        "aws_secret_key",
        re.compile(r"(?i)(?<=aws_secret_access_key)\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})"),
        anchor="_",  # in the keyword before the match
        requires_lower=("aws_secret_access_key",),
    ),
    PiiPattern(
        PiiType.SECRET,
        "jwt",
        re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
        anchor="J(?<=eyJ)",  # J is rarer than e
        lead=2,
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
        # the first - or _ of each prefix (at most 10 characters in), or AIza: rare first
        # characters, where the prefixes themselves start with common letters
        anchor=r"-(?:(?<=sk-)|(?<=xox[abposr]-)|(?<=glpat-))"
        r"|_(?:(?<=[sr]k_)|(?<=gh[pousr]_)|(?<=github_pat_)|(?<=hf_)|(?<=npm_))|AIza",
        lead=10,
    ),
)

_EMAIL: Final = PiiPattern(
    PiiType.EMAIL,
    "email",
    re.compile(
        r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
        r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
    ),
    anchor="@",
    lead=64,  # the longest local part
)

_IBAN: Final = PiiPattern(
    PiiType.IBAN,
    "iban",
    # (?<![A-Za-z0-9])[A-Za-z]{2}\d{2}..., from the check digits after the country code
    re.compile(
        r"\d(?<=(?<![A-Za-z0-9])[A-Za-z]{2}\d)\d"
        r"(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,4})?)(?![A-Za-z0-9])"
    ),
    _validate_iban,
    anchor=_DIGIT,
    lead=0,
    back=2,
    head=_DIGIT,
    shrink=True,
)

_CARD: Final = PiiPattern(
    PiiType.CREDIT_CARD,
    "credit_card",
    re.compile(
        r"\d(?<![\d.-]\d)(?:\d{11,18}"
        r"|\d{3}(?P<card_sep>[ -])\d{4}(?P=card_sep)\d{4}(?P=card_sep)\d{1,7}"  # 4-4-4-4(-3)
        r"|\d{3}(?P<amex_sep>[ -])\d{6}(?P=amex_sep)\d{4,5})(?![\d])"  # Amex / Diners 4-6-5
    ),
    _validate_card,
    anchor=_DIGIT,
    lead=0,
    head=_DIGIT,
)

_SSN: Final = PiiPattern(
    PiiType.US_SSN,
    "us_ssn",
    re.compile(r"\d(?<![\d-]\d)\d{2}(?P<ssn_sep>[- ])\d{2}(?P=ssn_sep)\d{4}(?![\d-])"),
    _validate_ssn,
    anchor=_DIGIT,
    lead=0,
    head=_DIGIT,
)

_BARE_SSN: Final = PiiPattern(
    PiiType.US_SSN,
    "us_ssn",
    re.compile(r"\d(?<!\d\d)\d{8}(?!\d)"),
    _validate_bare_ssn,
    anchor=_DIGIT,
    lead=0,
    requires_lower=("ssn", "social"),
)

_IPV4: Final = PiiPattern(
    PiiType.IP_ADDRESS,
    "ipv4",
    re.compile(r"\d(?<![\d.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?!\d|\.\d)"),
    _validate_ipv4,
    anchor=_DIGIT,
    lead=0,
    head=_DIGIT,
)

_IPV6: Final = PiiPattern(
    PiiType.IP_ADDRESS,
    "ipv6",
    re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"),
    _validate_ipv6,
    anchor=":[0-9A-Fa-f]{0,4}:",
    lead=4,
)

# A number, optionally with a +country code, a (0) trunk prefix, an (area) code, and an
# extension; or a run of 10-13 digits. Written to begin with its first character, [+(\d], so
# that `re` scans for that character at C speed (a leading look-ahead made it the slowest
# pattern by far), and so that it joins the one pass over digit runs; the branches after it say
# which character it was. Digit runs are possessive (\d{1,5}+) where a digit cannot follow
# them, so that a failed candidate is not retried with every shorter run. Readable form:
#   (?=[+(\d])(?<![\w+/.-])(?:\+\d{1,3}[ .-]?)?(?:\(0\) ?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,5}
#     (?:[ .-]\d{1,5}){0,4}[ .-]\d{1,8}(?:(?:x|ext\.? ?)\d{1,6})?(?!\w|-\d|\.\d)
#   | (?=[+\d])(?<![\w+])\+?\d{10,13}(?!\w)
_PHONE: Final = PiiPattern(
    PiiType.PHONE,
    "phone",
    re.compile(
        r"[+(\d](?:(?<![\w+/.-][+(\d])(?:"
        r"(?<=\+)\d{1,3}[ .-]?(?:\(0\) ?)?(?:\(\d{1,5}+\)[ .-]?)?\d{1,5}+"  # +country code
        r"|(?<=\()(?:0\) ?(?:\(\d{1,5}+\)[ .-]?)?|\d{1,5}+\)[ .-]?)\d{1,5}+"  # (0) or (area)
        r"|(?<=\d)\d{0,4}+)"  # a digit
        r"(?:[ .-]\d{1,5}+){0,4}[ .-]\d{1,8}+(?:(?:x|ext\.? ?)\d{1,6}+)?(?!\w|-\d|\.\d)"
        r"|(?<![\w+][+\d])(?:(?<=\+)\d{10,13}+|(?<=\d)\d{9,12}+)(?!\w))"  # a run of digits
    ),
    _validate_phone,
    anchor=_DIGIT,
    lead=1,  # a + or ( before the first digit
    head=r"[+(\d]",
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

_FIRST_DIGIT: Final = re.compile(_DIGIT).search
_FIRST_ASCII_DIGIT: Final = re.compile(_DIGIT, re.ASCII).search  # the same on an ASCII text
_TEXT_KEYED: Final = (PiiType.EMAIL, PiiType.SECRET, PiiType.IBAN, PiiType.IP_ADDRESS)
_CUT_LOOKBACK: Final = 256  # how far back from the length bound a scan looks for whitespace
# Past a stop position a pattern reads this far more: longer than any bounded-length candidate
# with its look-ahead, so a candidate that starts before the stop is read whole.
_STOP_MARGIN: Final = 1_024
_START: Final = operator.attrgetter("start")


_REGEX_SYNTAX: Final = frozenset("\\.^$*+?{}[]|()")
_UNSEEN: Final = -2  # an anchor not looked for yet in this text
Spans = list[tuple[int, int]]


class _DigitRuns:
    """The candidates of every pattern with a ``head``, from one pass of one regex: for each
    pattern, the same spans as its own ``finditer`` gives.

    The regex matches a character of the heads' class that no digit precedes (the start of a
    run of digits, or a + or ( before one), then tries each pattern's rest in a look-ahead that
    captures it, and needs one to match. So the pass stops once at each run, and learns there
    which patterns match and where each match ends. A pattern's candidates are those that start
    at or after the end of its previous one, as ``finditer`` resumes. One pass instead of one
    per pattern: a pass spends most of its time testing each character against the first
    character's class.
    """

    def __init__(self, patterns: Sequence[PiiPattern]) -> None:
        classes = [p.head[1:-1] if p.head.startswith("[") else p.head for p in patterns]
        heads = "[" + "".join(classes) + "]"
        lookaheads = "".join(
            f"(?:(?=(?<={p.head})(?P<_{i}>{p.regex.pattern[len(p.head) :]}))|)"
            for i, p in enumerate(patterns)
        )
        any_matched = "".join(f"(?(_{i})|" for i in range(len(patterns))) + "(?!)"
        source = rf"{heads}(?<!\d{heads}){lookaheads}{any_matched}{')' * len(patterns)}"
        self.regex = re.compile(source)
        # On an ASCII text \d and \w mean the same either way, and ASCII classes test faster.
        self.ascii_regex = re.compile(source, re.ASCII)
        self.groups = tuple(
            (self.regex.groupindex[f"_{i}"], p.back) for i, p in enumerate(patterns)
        )

    def spans(self, text: str, pos: int, endpos: int) -> list[Spans]:
        """Each pattern's candidate spans in ``text[pos:endpos]``, in text order."""
        regex = self.ascii_regex if text.isascii() else self.regex
        found: list[Spans] = [[] for _ in self.groups]
        resume = [0] * len(self.groups)
        for m in regex.finditer(text, pos, endpos):
            head, regs = m.start(), m.regs
            for k, (group, back) in enumerate(self.groups):
                end = regs[group][1]
                if end >= 0 and head - back >= resume[k]:
                    found[k].append((head - back, end))
                    resume[k] = end
        return found


def _joins_digit_runs(pattern: PiiPattern) -> bool:
    """Whether a pattern can join the one pass: it has a head, no global flags, and no
    numbered back-reference (its group numbers change inside the combined regex)."""
    return (
        bool(pattern.head)
        and pattern.regex.pattern.startswith(pattern.head)
        and pattern.regex.flags == re.UNICODE
        and re.search(r"\\[1-9]", pattern.regex.pattern) is None
    )


class _Step(NamedTuple):
    """One pattern as a scanner runs it, with its prefilters ready: a tuple, so that the scan
    loop unpacks it into local variables at once."""

    pattern: PiiPattern
    slot: int  # where a scan keeps the anchor's first occurrence (slot 0: the first digit)
    literal: str | None  # a literal anchor, found with str.find (faster than a regex search)
    search: Callable[[str, int, int], re.Match[str] | None] | None
    lead: int | None
    run: int  # its index among the patterns found in one pass over digit runs, or -1
    words: tuple[str, ...]  # lowercased
    words_regex: re.Pattern[str]  # the same words, ignoring case


def _step(pattern: PiiPattern, slots: dict[str, int], run: int) -> _Step:
    anchor = pattern.anchor
    literal = anchor if anchor and not _REGEX_SYNTAX.intersection(anchor) else None
    return _Step(
        pattern=pattern,
        slot=slots.setdefault(anchor, len(slots)) if anchor else -1,
        literal=literal,
        search=re.compile(anchor).search if anchor and literal is None else None,
        lead=pattern.lead,
        run=run,
        words=tuple(word.lower() for word in pattern.requires_lower),
        words_regex=re.compile(
            "|".join(f"(?i:{re.escape(word)})" for word in pattern.requires_lower) or "(?!)"
        ),
    )


def _regex_spans(
    pattern: PiiPattern, text: str, pos: int, endpos: int
) -> Iterator[tuple[int, int]]:
    """A pattern's candidate spans by its own regex, for one not found with ``_DigitRuns``."""
    in_group = pattern.type is PiiType.SECRET and pattern.regex.groups > 0
    resume = 0
    for m in pattern.regex.finditer(text, pos, endpos):
        start, end = m.span(1 if in_group and m.group(1) else 0)
        if start - pattern.back >= resume:
            yield start - pattern.back, end
            resume = end


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
        patterns = [p for p in self.PATTERNS if p.type in self.types]
        runs = [p for p in patterns if _joins_digit_runs(p)]
        try:
            self._runs = _DigitRuns(runs) if runs else None
        except re.error:  # e.g. two patterns with a group of the same name: each runs alone
            runs, self._runs = [], None
        slots = {_DIGIT: 0}
        self._plan = tuple(_step(p, slots, runs.index(p) if p in runs else -1) for p in patterns)
        # Each anchor's first occurrence in a text is kept in its slot, looked for when first
        # needed. One search for all anchors but the digit tells first whether any occurs: when
        # none does, the steps with one are left out, as are those that need a digit in a text
        # without one (every type but EMAIL and SECRET).
        self._unseen = [_UNSEEN] * len(slots)
        others = [anchor for anchor in slots if anchor != _DIGIT]
        self._any_anchor = re.compile("|".join(others)).search if others else None
        self._plans = {
            (digit, anchor): tuple(
                step
                for step in self._plan
                if (digit or step.pattern.type in (PiiType.EMAIL, PiiType.SECRET))
                and (anchor or step.slot <= 0)
            )
            for digit in (False, True)
            for anchor in (False, True)
        }

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

        Prefilters decide which patterns run, and from where: a pattern is skipped when it needs
        a digit and the text has none, when its anchor does not occur (one search tells whether
        any anchor but the digit does; each one's first occurrence is looked for once), or when
        none of its words does. The patterns with a ``head`` take their candidates from one
        pass over the digit runs, made when the first of them runs; the others from their own
        regex.

        Candidates come in text order, so one cursor walks the earlier matches once. After
        ``max_matches + 1`` matches a pattern stops, and later patterns read only a margin past
        that position: a match starting there lies past the cut ``scan`` makes anyway. A
        candidate longer than the margin (a secret) is read short: it still overlaps the match
        at the stop and is dropped, or at worst a shorter match of it adds a span.
        """
        digit = (_FIRST_ASCII_DIGIT if text.isascii() else _FIRST_DIGIT)(text, 0, limit)
        some = self._any_anchor is not None and self._any_anchor(text, 0, limit) is not None
        firsts = self._unseen.copy()
        firsts[0] = -1 if digit is None else digit.start()
        runs: list[Spans] | None = None
        lowered: str | None = None
        plain = True  # whether the lowered text has the words that occur ignoring case
        taken: list[PiiMatch] = []
        stop, most = limit, self.max_matches
        plan = self._plans[digit is not None, some]
        for step in plan:
            pattern, slot, literal, search, lead, run, words, words_regex = step
            pos = 0
            if slot >= 0:
                first = firsts[slot]
                if first == _UNSEEN:
                    if literal is not None:
                        first = text.find(literal, 0, limit)
                    else:
                        found = search(text, 0, limit) if search is not None else None
                        first = -1 if found is None else found.start()
                    firsts[slot] = first
                if first < 0:
                    continue
                if lead is not None and first > lead:
                    pos = first - lead
            if words:  # İ, ı (i) and ſ (s) match ASCII letters ignoring case, but lowercase apart
                if lowered is None:
                    lowered = text[:limit].lower()
                    plain = text.isascii() or not (
                        "\u0130" in text or "\u0131" in text or "\u017f" in text
                    )
                if not plain:
                    if words_regex.search(text, 0, limit) is None:
                        continue
                else:
                    for word in words:
                        if word in lowered:
                            break
                    else:
                        continue
            endpos = limit if stop == limit else min(limit, stop + _STOP_MARGIN)
            candidates: Iterable[tuple[int, int]]
            if run >= 0 and self._runs is not None:
                if runs is None:  # each head is a digit or one character before one
                    runs = self._runs.spans(text, max(0, firsts[0] - 1), endpos)
                candidates = runs[run]
            else:
                candidates = _regex_spans(pattern, text, pos, endpos)
            new: list[PiiMatch] = []
            cursor, earlier = 0, len(taken)
            for start, end in candidates:
                if start >= stop:
                    break
                while cursor < earlier and taken[cursor].end <= start:
                    cursor += 1
                if cursor < earlier and taken[cursor].start < end:
                    continue
                match = self._validated(pattern, text[start:end], text, start)
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
