"""
The answers the service gives by itself, with no connector involved:
C{robots.txt}, the keys of the signed identity assertion, and error pages
(refused requests, unknown hosts, failures on the way to the app).

Pure: no reactor, no I/O; the caller supplies the time.
"""

from __future__ import annotations

import attrs

from appproxy.frontend.errorpage import (
    ROBOTS_TXT,
    ErrorPage,
    format_timestamp,
    render_error,
    render_not_found,
)

__all__ = [
    "JWKS_PATH",
    "REFUSED_METHODS",
    "ROBOTS_PATH",
    "SERVICE",
    "Answer",
    "error_answer",
    "jwks_answer",
    "not_found_answer",
    "robots_answer",
    "upstream_error_page",
]

#: Every host the service answers for keeps itself out of search engines.
ROBOTS_PATH = b"/robots.txt"
#: Where every app host publishes the keys of the signed identity assertion.
JWKS_PATH = b"/.well-known/appproxy/jwks.json"
#: Methods the proxy refuses outright.
REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE"})
#: The source an error page names when the service itself refused.
SERVICE = "appproxy service"

_UPSTREAM_TITLES = {
    "backend-refused": "Internal application unreachable",
    "backend-reset": "Internal application closed the connection",
    "backend-tls": "Internal application TLS failure",
    "timeout": "Internal application timed out",
    "backend-error": "Internal application error",
    "bad-request": "Bad request",
}


@attrs.frozen
class Answer:
    """A complete response of the service's own."""

    status: int
    content_type: bytes
    body: bytes


def robots_answer() -> Answer:
    """C{/robots.txt}: nothing is to be indexed."""
    return Answer(200, b"text/plain; charset=utf-8", ROBOTS_TXT)


def jwks_answer(jwks: bytes) -> Answer:
    """The assertion keys, a JSON Web Key Set."""
    return Answer(200, b"application/jwk-set+json", jwks)


def error_answer(
    status: int,
    title: str,
    detail: str,
    *,
    source: str,
    request_id: str,
    now: float,
    accept: bytes | None,
) -> Answer:
    """An error page, HTML or JSON as the C{Accept} header prefers."""
    page = ErrorPage(status, title, detail, source, request_id, format_timestamp(now))
    return Answer(status, *render_error(page, accept))


def not_found_answer(host: str, *, request_id: str, now: float, accept: bytes | None) -> Answer:
    """The 404 page for a host that publishes no app."""
    return Answer(404, *render_not_found(host, request_id, format_timestamp(now), accept))


def upstream_error_page(kind: str, detail: str) -> tuple[str, str, str]:
    """
    The title, detail and source of the error page for an error the connector
    reported (C{appproxy-error: kind}, with C{detail}).
    """
    return (
        _UPSTREAM_TITLES.get(kind, "Bad gateway"),
        detail or "The internal application could not be reached.",
        "internal application" if kind != "bad-request" else SERVICE,
    )
