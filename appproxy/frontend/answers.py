"""
The answers the service gives by itself, with no connector involved:
C{robots.txt}, the keys of the signed identity assertion, and error pages
(refused requests, unknown hosts, failures on the way to the app).

Pure: no reactor, no I/O; the caller supplies the time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from appproxy.frontend.errorpage import (
    ROBOTS_TXT,
    ErrorPage,
    format_timestamp,
    render_error,
    render_not_found,
)

if TYPE_CHECKING:
    from appproxy.config import AppConfig

__all__ = [
    "JWKS_PATH",
    "REFUSED_METHODS",
    "ROBOTS_PATH",
    "SERVICE",
    "Answer",
    "app_label",
    "connection_lost_page",
    "error_answer",
    "jwks_answer",
    "no_connector_page",
    "not_found_answer",
    "reason_phrase",
    "robots_answer",
    "upstream_error_page",
    "withdrawn_app_page",
]

#: Every host the service answers for keeps itself out of search engines.
ROBOTS_PATH = b"/robots.txt"
#: Where every app host publishes the keys of the signed identity assertion.
JWKS_PATH = b"/.well-known/appproxy/jwks.json"
#: Methods the proxy refuses outright.
REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE"})
#: The source an error page names when the service itself refused.
SERVICE = "appproxy service"

#: Reason phrases twisted.web's table lacks (it would say "Unknown Status").
_PHRASES = {426: b"Upgrade Required", 428: b"Precondition Required", 429: b"Too Many Requests"}

#: What the user is told when the way to the app failed, by the connector's
#: C{appproxy-error} kind: a title, and a sentence about the app (C{{app}}).
#: The connector's own detail (the internal URL, the low-level reason) never
#: reaches the page: it goes to the service's log with the request id.
_UPSTREAM_PAGES = {
    "backend-refused": ("Application unreachable", "{app} cannot be reached right now."),
    "backend-reset": (
        "Application connection lost",
        "{app} closed the connection before it answered.",
    ),
    "backend-tls": (
        "Application unreachable",
        "A secure connection to {app} could not be established.",
    ),
    "timeout": ("Application timed out", "{app} did not answer in time."),
    "backend-error": ("Application error", "The request to {app} failed."),
}
_UPSTREAM_DEFAULT = ("Bad gateway", "{app} could not be reached.")
#: What follows every such sentence.
_TRY_AGAIN = (
    " Please try again in a few minutes; if it keeps happening, contact your"
    " administrator and quote the request ID below."
)


@attrs.frozen
class Answer:
    """A complete response of the service's own."""

    status: int
    content_type: bytes
    body: bytes


def reason_phrase(status: int) -> bytes | None:
    """C{status}'s reason phrase where twisted.web has none; L{None}: its own."""
    return _PHRASES.get(status)


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


def app_label(app: AppConfig | None) -> str:
    """
    The app as an error page names it: its configured name and the address
    the user opened, never anything internal.
    """
    if app is None:
        return "The application"
    return f"{app.name} ({app.external_url})"


def upstream_error_page(kind: str, app: AppConfig | None) -> tuple[str, str, str]:
    """
    The title, detail and source of the error page for an error the connector
    (or the service's end of the tunnel) reported as C{appproxy-error: kind}.

    The detail names the app in the user's terms; the technical detail that
    came with the error is for the log, not for this page.
    """
    label = app_label(app)
    if kind == "bad-request":
        return "Bad request", f"The request cannot be forwarded to {label}.", SERVICE
    title, sentence = _UPSTREAM_PAGES.get(kind, _UPSTREAM_DEFAULT)
    return title, sentence.format(app=label) + _TRY_AGAIN, "internal application"


def no_connector_page(app: AppConfig | None) -> tuple[str, str, str]:
    """
    The title, detail and source of the 503 when no connector took the
    request (none connected, or all busy until the queue timeout).
    """
    label = app_label(app)
    return (
        "No connector available",
        f"No connector is available for {label} right now." + _TRY_AGAIN,
        "connector",
    )


def connection_lost_page(app: AppConfig | None) -> tuple[str, str, str]:
    """
    The title, detail and source of the 502 when the tunnel connection
    carrying the request was lost before the app answered.
    """
    label = app_label(app)
    return (
        "Connector connection lost",
        f"The connection to {label} was lost before it answered." + _TRY_AGAIN,
        "connector",
    )


def withdrawn_app_page(app: AppConfig | None) -> tuple[str, str, str]:
    """
    The title, detail and source of the 502 when a configuration reload
    removed the app while its request was on its way.
    """
    label = app_label(app)
    return (
        "Application withdrawn",
        f"{label} was removed from this service while your request was on its way;"
        " its answer was not passed on. If the application should still be"
        " here, contact your administrator and quote the request ID below.",
        SERVICE,
    )
