"""Upload the dashboards to a Grafana through its HTTP API (grafana-client)."""

from __future__ import annotations

from urllib.parse import urlparse

from dashboards.build import build_all
from monitor.errors import MonitorError
from monitor.policy.config import Policy


def push_all(
    url: str, token: str, folder: str, policy: Policy | None = None
) -> list[tuple[str, int]]:
    """Create the folder when missing, then create or overwrite each dashboard in it (threshold
    lines from ``policy``, None: the defaults)."""
    from grafana_client.api import GrafanaApi
    from grafana_client.client import GrafanaException

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise MonitorError(f"--url must be http(s)://host[:port], got {url!r}")
    api = GrafanaApi.from_url(url, credential=token)
    try:
        existing = {f["title"]: f["uid"] for f in api.folder.get_all_folders()}
        folder_uid = existing.get(folder) or api.folder.create_folder(folder)["uid"]
        pushed = []
        for board in build_all(policy).values():
            result = api.dashboard.update_dashboard(
                {
                    "dashboard": board,
                    "folderUid": folder_uid,
                    "overwrite": True,
                    "message": "llm-monitor dashboards push",
                }  # fmt: skip
            )
            pushed.append((str(result.get("uid", board["uid"])), int(result.get("version", 0))))
        return pushed
    except GrafanaException as exc:
        raise MonitorError(f"Grafana at {url}: {exc}") from exc
