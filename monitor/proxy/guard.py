"""The inline guard (opt-in): the cheap detectors on a call's request and response.

Off by default: the proxy is a monitor first and a guard only when asked
(``--block pii,injection``, ``--redact pii``). Two detectors, both regex work of microseconds,
never a model:

- ``pii``: ``detectors.pii.PiiScanner`` (validated spans: e-mail, phone, card, SSN, IBAN, IP,
  secrets). ``block`` refuses the call; ``redact`` replaces each span with ``<TYPE>``
  (``detectors.pii.redact``) in the request before it goes upstream, or in the answer before
  it goes back.
- ``injection``: the pattern half of ``detectors.injection.InjectionDetector``
  (``pattern_score``) against its calibrated threshold, on the request only. The worker still
  runs the full detector (patterns and embedding similarity) on every event; the proxy does
  not load the embedding model, so it blocks what the patterns catch and no more.

Scanned: the messages a user or a tool wrote (``user``, ``tool``, ``function``; the app's own
``system``/``developer`` instructions are not), the legacy ``prompt``, and each choice's text
in the answer. A streamed answer is passed on as it comes: it is scanned once it ended and
only flagged (recorded), never cut.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from detectors.injection import InjectionDetector, calibrated_threshold
from detectors.pii import PiiMatch, PiiScanner, PiiType, redact

Detector = Literal["pii", "injection"]
Stage = Literal["request", "response"]
Action = Literal["blocked", "redacted", "flagged"]
DETECTORS: Final[tuple[Detector, ...]] = ("pii", "injection")
STAGES: Final[tuple[Stage, ...]] = ("request", "response")
REDACTABLE: Final = frozenset({"pii"})
SCANNED_ROLES: Final = frozenset({"user", "tool", "function"})


@dataclass(frozen=True)
class Verdict:
    """One detector's action on one stage of a call; ``detail`` names what it found (PII
    types, injection patterns), never the text itself."""

    detector: Detector
    action: Action
    stage: Stage
    detail: str


@dataclass(frozen=True)
class GuardResult:
    """What the guard did to a request or a response: ``blocked`` (the call must be refused),
    or the redactions made, with ``body`` the redacted copy (None when nothing changed)."""

    blocked: Verdict | None = None
    verdicts: tuple[Verdict, ...] = ()
    body: dict[str, Any] | None = None


@dataclass
class _Texts:
    """The guarded texts of a body, each with a setter that writes a redacted text back."""

    items: list[tuple[str, Callable[[str], None]]] = field(default_factory=list)

    def add(self, text: Any, setter: Callable[[str], None]) -> None:
        if isinstance(text, str) and text:
            self.items.append((text, setter))


def parse_detectors(names: str | Iterable[str]) -> frozenset[Detector]:
    """``"pii,injection"`` → the detectors; ValueError naming the valid ones."""
    parts = names.split(",") if isinstance(names, str) else list(names)
    chosen: set[Detector] = set()
    for raw in parts:
        name = raw.strip().lower()
        if not name:
            continue
        if name == "pii":
            chosen.add("pii")
        elif name == "injection":
            chosen.add("injection")
        else:
            raise ValueError(f"unknown guard detector {raw!r}; valid: {', '.join(DETECTORS)}")
    return frozenset(chosen)


def parse_stages(names: str | Iterable[str]) -> frozenset[Stage]:
    parts = names.split(",") if isinstance(names, str) else list(names)
    chosen: set[Stage] = set()
    for raw in parts:
        name = raw.strip().lower()
        if name == "request":
            chosen.add("request")
        elif name == "response":
            chosen.add("response")
        elif name:
            raise ValueError(f"unknown guard stage {raw!r}; valid: {', '.join(STAGES)}")
    if not chosen:
        raise ValueError("at least one guard stage is needed: request, response")
    return frozenset(chosen)


class Guard:
    """Blocks or redacts per detector. ``block`` and ``redact`` name detectors (a detector in
    neither is off); ``stages`` where they look. Knobs: ``pii_types`` (default every type),
    ``injection_threshold`` (default the detector's calibrated one)."""

    def __init__(
        self,
        *,
        block: Iterable[str] = (),
        redact: Iterable[str] = (),
        stages: Iterable[str] = STAGES,
        pii_types: Iterable[PiiType | str] | None = None,
        injection_threshold: float | None = None,
    ) -> None:
        self.block = parse_detectors(block)
        self.redact = parse_detectors(redact)
        self.stages = parse_stages(stages)
        if self.block & self.redact:
            both = ", ".join(sorted(self.block & self.redact))
            raise ValueError(f"a detector either blocks or redacts, not both: {both}")
        if not self.redact <= REDACTABLE:
            raise ValueError("only pii can be redacted; injection can only be blocked")
        if not self.block and not self.redact:
            raise ValueError("the guard needs a detector to block or redact: pii, injection")
        self.injection_threshold = (
            calibrated_threshold() if injection_threshold is None else injection_threshold
        )
        if not 0.0 <= self.injection_threshold <= 1.0:
            raise ValueError(
                f"injection_threshold must be within [0, 1], got {self.injection_threshold}"
            )
        self.scanner = PiiScanner(pii_types)

    @property
    def pii(self) -> Literal["blocked", "redacted"] | None:
        if "pii" in self.block:
            return "blocked"
        return "redacted" if "pii" in self.redact else None

    def describe(self) -> dict[str, Any]:
        return {
            "block": sorted(self.block),
            "redact": sorted(self.redact),
            "stages": sorted(self.stages),
            "pii_types": sorted(t.value for t in self.scanner.types if t is not PiiType.UNSCANNED),
            "injection_threshold": self.injection_threshold,
        }

    # -- the two stages --------------------------------------------------------------------

    def check_request(self, body: dict[str, Any]) -> GuardResult:
        """Injection first (it blocks), then PII (blocks or redacts) in the request's texts."""
        if "request" not in self.stages:
            return GuardResult()
        copied = copy.deepcopy(body) if "pii" in self.redact else body
        texts = _request_texts(copied)
        if "injection" in self.block:
            hits = self._injection([text for text, _ in texts.items])
            if hits:
                verdict = Verdict("injection", "blocked", "request", hits)
                return GuardResult(blocked=verdict, verdicts=(verdict,))
        return self._pii(texts, copied, "request")

    def check_response(self, body: dict[str, Any]) -> GuardResult:
        """PII in a non-streamed answer's choices: blocks or redacts."""
        if "response" not in self.stages or self.pii is None:
            return GuardResult()
        copied = copy.deepcopy(body) if "pii" in self.redact else body
        return self._pii(_response_texts(copied), copied, "response")

    def check_streamed(self, text: str) -> tuple[Verdict, ...]:
        """PII in a streamed answer that was already passed on: flagged, never cut."""
        if "response" not in self.stages or self.pii is None:
            return ()
        types = _types(self._matches(text))
        return (Verdict("pii", "flagged", "response", types),) if types else ()

    # -- detectors -------------------------------------------------------------------------

    def _injection(self, texts: Sequence[str]) -> str:
        found: set[str] = set()
        for text in texts:
            score, names = InjectionDetector.pattern_score(text)
            if score >= self.injection_threshold:
                found.update(names)
        return ",".join(sorted(found))

    def _matches(self, text: str) -> list[PiiMatch]:
        return [m for m in self.scanner.scan(text) if m.type is not PiiType.UNSCANNED]

    def _pii(self, texts: _Texts, body: dict[str, Any], stage: Stage) -> GuardResult:
        action = self.pii
        if action is None:
            return GuardResult()
        found: list[PiiMatch] = []
        for text, setter in texts.items:
            matches = self._matches(text)
            if not matches:
                continue
            found.extend(matches)
            if action == "blocked":
                verdict = Verdict("pii", "blocked", stage, _types(found))
                return GuardResult(blocked=verdict, verdicts=(verdict,))
            setter(redact(text, matches))
        if not found:
            return GuardResult()
        return GuardResult(verdicts=(Verdict("pii", "redacted", stage, _types(found)),), body=body)


def _types(matches: Iterable[PiiMatch]) -> str:
    return ",".join(sorted({m.type.value for m in matches}))


def _setter(container: Any, key: Any) -> Callable[[str], None]:
    def put(value: str) -> None:
        container[key] = value

    return put


def _content_texts(texts: _Texts, holder: dict[str, Any], key: str) -> None:
    """A message's content: a string, or the text parts of a list of content parts."""
    content = holder.get(key)
    if isinstance(content, str):
        texts.add(content, _setter(holder, key))
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type", "text") == "text":
                texts.add(part.get("text"), _setter(part, "text"))


def _request_texts(body: dict[str, Any]) -> _Texts:
    texts = _Texts()
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and message.get("role") in SCANNED_ROLES:
                _content_texts(texts, message, "content")
    prompt = body.get("prompt")  # the legacy completions endpoint
    if isinstance(prompt, str):
        texts.add(prompt, _setter(body, "prompt"))
    elif isinstance(prompt, list):
        for i, item in enumerate(prompt):
            texts.add(item, _setter(prompt, i))
    return texts


def _response_texts(body: dict[str, Any]) -> _Texts:
    texts = _Texts()
    for choice in _choices(body):
        message = choice.get("message")
        if isinstance(message, dict):
            _content_texts(texts, message, "content")
        texts.add(choice.get("text"), _setter(choice, "text"))
    return texts


def _choices(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    choices = body.get("choices")
    if isinstance(choices, list):
        yield from (c for c in choices if isinstance(c, dict))
