"""What one proxy serves: its upstreams, the series its events and kill switch use, timeouts.

Validated once, in ``__init__``: a bad URL or bound is a ``ValueError`` naming what is valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

API_PREFIX: Final = "/v1"  # what OpenAI-compatible clients put in their base_url
MAX_LABEL_CHARS: Final = 256  # model, version, deployment, app, route


def upstream_base(url: str, name: str = "upstream") -> str:
    """The base the proxy appends ``/chat/completions`` (and every path under ``/v1``) to.

    ``https://api.openai.com/v1`` and ``http://vllm:8000/v1`` are used as they are (like an
    OpenAI client's ``base_url``); an upstream given without a path (``http://vllm:8000``)
    gets ``/v1``, the prefix the proxy itself serves."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"{name} must be an http:// or https:// URL with a host, e.g. "
            f"http://127.0.0.1:8000/v1; got {url!r}"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"{name} must not have a query or fragment; got {url!r}")
    path = parts.path.rstrip("/") or API_PREFIX
    return f"{parts.scheme}://{parts.netloc}{path}"


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def target_url(base: str, path: str, query: str = "") -> str:
    """Where a request for ``path`` goes on the upstream whose base is ``base``: a path under
    ``/v1`` replaces that prefix by the base; any other path goes to the base's origin."""
    if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
        url = base + path[len(API_PREFIX) :]
    else:
        url = origin(base) + path
    return f"{url}?{query}" if query else url


@dataclass(frozen=True)
class ProxyConfig:
    """One proxy's routing and event settings.

    ``model`` names the model in events and kill-switch look-ups (default: the request's
    ``model`` field); ``model_version`` likewise (default: the model the response names, else
    the requested one). Calls served by the fallback are published under
    ``fallback_deployment``, so the killed series stays clean; ``fallback_model`` rewrites the
    request's ``model`` for the fallback upstream.
    """

    upstream: str
    fallback_upstream: str | None = None
    fallback_model: str | None = None
    fallback_deployment: str = "fallback"
    model: str | None = None
    model_version: str | None = None
    deployment: str = "stable"
    app: str = ""
    route: str = ""
    capture_text: bool = True
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    max_body_bytes: int = 32 * 1024 * 1024
    ready_grace_s: float = 5.0

    def __post_init__(self) -> None:
        upstream_base(self.upstream, "upstream")
        if self.fallback_upstream is not None:
            upstream_base(self.fallback_upstream, "fallback_upstream")
        elif self.fallback_model is not None:
            raise ValueError("fallback_model needs fallback_upstream")
        for name in ("deployment", "fallback_deployment", "app", "route"):
            value = getattr(self, name)
            if len(value) > MAX_LABEL_CHARS:
                raise ValueError(f"{name} must be at most {MAX_LABEL_CHARS} characters")
        for name in ("model", "model_version", "fallback_model"):
            value = getattr(self, name)
            if value is not None and not 0 < len(value) <= MAX_LABEL_CHARS:
                raise ValueError(f"{name} must be 1 to {MAX_LABEL_CHARS} characters, or None")
        if self.deployment == self.fallback_deployment and self.fallback_upstream is not None:
            raise ValueError(
                "fallback_deployment must differ from deployment: fallback calls are published "
                "under their own series so the killed one stays clean"
            )
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("connect_timeout_s and read_timeout_s must be > 0")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.ready_grace_s < 0:
            raise ValueError(f"ready_grace_s must be >= 0, got {self.ready_grace_s}")

    @property
    def upstream_base(self) -> str:
        return upstream_base(self.upstream)

    @property
    def fallback_base(self) -> str | None:
        if self.fallback_upstream is None:
            return None
        return upstream_base(self.fallback_upstream, "fallback_upstream")
