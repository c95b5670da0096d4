"""
Which internal origins the connector may reach: only those of the apps in
the configuration it pulled from the service (C{GET /v1/config}).

Every request and WebSocket the service sends names its app
(C{appproxy-app}) and the internal URL's C{:scheme} and C{:authority}; the
connector refuses one whose app is not in its pulled configuration, or
whose scheme and authority are not that app's internal origin.  The URL
dialled is C{:scheme://:authority} followed by C{:path}, so a C{:path} that
does not start with C{/} (C{0/admin}, C{:22/}, C{.evil.example/}) would move
it to another port or host: L{path_refusal} refuses it, whatever the
configuration (only C{OPTIONS *} may have another).  Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import attrs

__all__ = ["AllowedOrigins", "origin", "path_refusal"]

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def origin(scheme: str, authority: str) -> str:
    """
    C{scheme://authority}, normalised: lowercase, the scheme's default port
    elided, an empty port (C{host:}) dropped.
    """
    scheme = scheme.lower()
    authority = authority.lower()
    host, colon, port = authority.rpartition(":")
    if colon and "]" not in port and (port in ("", _DEFAULT_PORTS.get(scheme))):
        authority = host
    return f"{scheme}://{authority}"


def path_refusal(method: bytes, path: bytes) -> str | None:
    """
    L{None} if C{path} may follow the origin in the URL dialled (it starts
    with C{/}, or is C{*} for C{OPTIONS}); otherwise why not, for the log.
    """
    if path.startswith(b"/") or (path == b"*" and method == b"OPTIONS"):
        return None
    shown = path[:100].decode("latin-1")
    return f"the path {shown!r} does not start with '/' (it would change the origin dialled)"


def _url_origin(url: str) -> str:
    parts = urlsplit(url)
    return origin(parts.scheme, parts.netloc)


@attrs.frozen
class AllowedOrigins:
    """The apps of a pulled configuration: app name -> its internal origin."""

    apps: Mapping[str, str]

    @classmethod
    def of(cls, apps: Iterable[tuple[str, str]]) -> AllowedOrigins:
        """From C{(app name, internal URL)} pairs."""
        return cls({name: _url_origin(url) for name, url in apps})

    def refusal(self, app: str, scheme: bytes, authority: bytes) -> str | None:
        """
        L{None} if the app is configured and the request goes to its
        internal origin; otherwise why not, for the log.
        """
        allowed = self.apps.get(app)
        wanted = origin(scheme.decode("latin-1"), authority.decode("latin-1"))
        if allowed is None:
            return (
                f"the app {app!r} is not in this connector's configuration"
                f" (a request to {wanted} refused)"
            )
        if wanted != allowed:
            return (
                f"{wanted} is not the internal origin of the app {app!r} ({allowed})"
                " in this connector's configuration"
            )
        return None
