"""
The sign-in and audit API for security tooling: C{[admin]} (its HTTPS
listener, off unless C{listen} is set) and C{[events]} (how long sign-in and
audit events are kept).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from appproxy.config._endpoint import endpoint
from appproxy.config._files import certificate_files
from appproxy.config._messages import quote
from appproxy.config._metrics import _same_address
from appproxy.config._table import Table
from appproxy.config.admin_model import AdminConfig, EventsConfig

__all__ = ["admin", "events"]

_ADMIN_KEYS = ("listen", "cert", "key", "audience", "url")
_EVENTS_KEYS = ("retention_days",)


def admin(top: Table, listens: dict[str, str]) -> AdminConfig:
    """
    C{[admin]}: off (C{listen} L{None}) when absent or without C{listen}.

    @param listens: the other listeners' endpoint strings, by key, which
        C{listen} must differ from.
    """
    table = top.optional_table("admin", _ADMIN_KEYS)
    if table is None:
        return AdminConfig()
    if not table.has("listen"):
        for key in ("cert", "key", "audience", "url"):
            if table.has(key):
                table.fail(key, "is set but [admin] listen is not: set listen to turn the API on")
        return AdminConfig()
    listen = endpoint(
        table, "listen", "appproxy adds TLS itself: use a tcp: endpoint and admin.cert/admin.key"
    )
    for key, other in listens.items():
        if _same_address(listen, other):
            table.fail(
                "listen",
                f"{quote(listen)} is the address of {key} ({quote(other)}):"
                " the admin API needs a listener of its own, never the public one",
            )
    if table.has("cert") != table.has("key"):
        table.fail("cert" if table.has("key") else "key", "set both cert and key, or neither")
    cert = certificate_files(table, "cert", "key") if table.has("cert") else None
    return AdminConfig(
        listen=listen,
        cert=cert,
        audience=table.optional_string("audience"),
        url=_page_url(table),
    )


def _page_url(table: Table) -> str | None:
    """C{[admin] url}: C{https://host[:port]}, no path, query or fragment."""
    url = table.optional_string("url")
    if url is None:
        return None
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        table.fail("url", f"{quote(url)} has an invalid port")
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        table.fail("url", f"{quote(url)} must be https://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        table.fail("url", f"{quote(url)} must have no path: the page is at URL/admin/")
    return f"https://{parts.netloc.lower()}"


def events(top: Table) -> EventsConfig:
    """C{[events]}: the retention of sign-in and audit events (default 90 days)."""
    table = top.optional_table("events", _EVENTS_KEYS)
    if table is None:
        return EventsConfig()
    return EventsConfig(retention_days=table.integer("retention_days", 90, 1, 36500))
