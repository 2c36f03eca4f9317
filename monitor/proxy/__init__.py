"""``llm-monitor proxy``: an OpenAI-compatible sidecar between an app and its model.

It forwards every call to the upstream unchanged (streams chunk by chunk), publishes one event
per chat/completions call through the same publisher apps use, follows the kill switch from
the policy role's state (engaged → the fallback upstream, or a 503), and, when asked, guards
requests and answers with the cheap detectors. It never fails a call for Kafka's sake.

- ``config``: ``ProxyConfig``, the upstreams and the series the events name;
- ``server``: ``ProxyServer`` (aiohttp), ``kafka_proxy`` to build one on Kafka;
- ``killswitch``: ``KillSwitchFollower`` (the policy topic), ``StaticKillSwitches``;
- ``guard``: ``Guard`` (pii, injection; block or redact);
- ``record``: one call → one ``Event``; ``metrics``: the proxy's Prometheus metrics;
- ``kubernetes``: the sidecar container and an example Deployment;
- ``loopback``: a loopback OpenAI-compatible model server (tests, benchmark, demos).

See docs/proxy.md.
"""

from monitor.proxy.config import ProxyConfig
from monitor.proxy.guard import Guard
from monitor.proxy.killswitch import KillSwitchFollower, KillSwitchTable, StaticKillSwitches
from monitor.proxy.server import ProxyServer, kafka_proxy

__all__ = [
    "Guard",
    "KillSwitchFollower",
    "KillSwitchTable",
    "ProxyConfig",
    "ProxyServer",
    "StaticKillSwitches",
    "kafka_proxy",
]
