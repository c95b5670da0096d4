"""
Pick the published application for a request: by C{Host}, then by the
longest matching external path prefix.

Pure: no reactor, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from appproxy.http.authority import parse_authority
from appproxy.http.paths import has_dot_segments

__all__ = [
    "RoutableApp",
    "Router",
    "has_dot_segments",
    "internal_path",
    "normalise_host",
]


class RoutableApp(Protocol):
    """What the router needs of an application."""

    @property
    def external_host(self) -> str:
        """C{host} or C{host:port}: lowercase, default port 443 elided."""

    @property
    def external_path(self) -> str:
        """C{/} or C{/a/b/}: starts and ends with C{/}."""


App = TypeVar("App", bound=RoutableApp)

_OWS = " \t"
#: How many distinct C{Host} values a L{Router} remembers normalised.
_HOST_CACHE_SIZE = 1024


def normalise_host(host: str, default_port: int = 443) -> str | None:
    """
    Normalise a C{Host} value: lowercase, trailing dot stripped, default port
    elided, IPv6 literal (in brackets) in its compressed form.

    Accepted names are dot-separated labels of ASCII letters, digits, C{-}
    and C{_} (1-63 characters each, 253 in all).  An empty port (C{host:}) is
    the default port.  Surrounding spaces and tabs are ignored.

    @return: the normalised host, or None if C{host} is malformed (see
        L{parse_authority}).
    """
    authority = parse_authority(host.strip(_OWS))
    if authority is None:
        return None
    return authority.canonical().normalised(default_port)


def _normalise_request_host(host: bytes | str | None) -> str | None:
    """A request's C{Host} normalised (bytes decoded as latin-1), or None."""
    if host is None:
        return None
    if isinstance(host, bytes):
        host = host.decode("latin-1")
    return normalise_host(host)


def _matches_prefix(path: str, prefix: str) -> bool:
    """Does C{path} start with C{prefix}, or equal it without its trailing slash?"""
    return path.startswith(prefix) or path == prefix[:-1]


def internal_path(external_path_prefix: str, internal_path_prefix: str, request_path: str) -> str:
    """
    The request path (with its query string) for the internal application.

    C{internal_path("/", "/wiki/", "/page?x=1") == "/wiki/page?x=1"};
    C{internal_path("/wiki/", "/w/", "/wiki") == "/w/"}.

    @raise ValueError: if C{request_path} is not under C{external_path_prefix}.
    """
    path, question, query = request_path.partition("?")
    if path.startswith(external_path_prefix):
        translated = internal_path_prefix + path[len(external_path_prefix) :]
    elif path == external_path_prefix[:-1]:
        translated = internal_path_prefix
    else:
        raise ValueError(f"{request_path!r} is not under {external_path_prefix!r}")
    return translated + question + query


class Router(Generic[App]):
    """
    Routes requests to applications by host and longest path prefix.

    @raise ValueError: on construction, if an application's external host is
        malformed, its external path does not start and end with C{/}, or two
        applications share a host and path.
    """

    def __init__(self, apps: Iterable[App]) -> None:
        by_host: dict[str, list[App]] = {}
        for app in apps:
            host = normalise_host(app.external_host)
            if host is None:
                raise ValueError(f"malformed external host {app.external_host!r}")
            path = app.external_path
            if not (path.startswith("/") and path.endswith("/")):
                raise ValueError(f"external path {path!r} must start and end with '/'")
            candidates = by_host.setdefault(host, [])
            if any(other.external_path == path for other in candidates):
                raise ValueError(f"two applications are published at {host}{path}")
            candidates.append(app)
        for candidates in by_host.values():
            candidates.sort(key=lambda app: len(app.external_path), reverse=True)
        self._by_host = by_host
        #: C{Host} values as sent, normalised: a client sends the same few
        #: on every request.  Bounded: emptied when full.
        self._hosts: dict[bytes | str, str | None] = {}

    def _normalised(self, host: bytes | str | None) -> str | None:
        if host is None:
            return None
        try:
            return self._hosts[host]
        except KeyError:
            pass
        normalised = _normalise_request_host(host)
        if len(self._hosts) >= _HOST_CACHE_SIZE:
            self._hosts.clear()
        self._hosts[host] = normalised
        return normalised

    def publishes_host(self, host: bytes | str | None) -> bool:
        """
        Is an application published on this host (the C{Host} header or
        C{:authority}), whatever its path?  None or malformed gives False.
        """
        normalised = self._normalised(host)
        return normalised is not None and normalised in self._by_host

    def route(self, host: bytes | str | None, path: bytes | str) -> App | None:
        """
        The application for a request, or None.

        @param host: the C{Host} header (or C{:authority}); None or malformed
            gives None.
        @param path: the request target, query string allowed (ignored for
            routing); bytes are decoded as latin-1.
        """
        normalised = self._normalised(host)
        if normalised is None:
            return None
        if isinstance(path, bytes):
            path = path.decode("latin-1")
        path = path.partition("?")[0]
        for app in self._by_host.get(normalised, ()):
            if _matches_prefix(path, app.external_path):
                return app
        return None
