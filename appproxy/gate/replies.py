"""
What the sign-in gate answers: L{Admit} (go on to the app, with identity
headers) or a L{Reply} the front end writes as it is (a redirect or a page),
and the pages themselves: the error page, the sign-in failure page naming the
step that failed, the signed-out page.

Pure: no reactor, no I/O; the caller supplies the time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

import attrs

from appproxy.access.session import Session
from appproxy.frontend.answers import error_answer
from appproxy.frontend.errorpage import HTML_CONTENT_TYPE

__all__ = [
    "STEP_LABELS",
    "Admit",
    "Reply",
    "Requester",
    "error_page",
    "failure_page",
    "redirect",
    "signed_out",
]

#: What each failing step is called on the error page.
STEP_LABELS: Mapping[str, str] = {
    "discovery": "reaching the identity provider",
    "authorization": "signing in at the identity provider",
    "state": "matching the sign-in to this browser",
    "token": "redeeming the authorization code",
    "id-token": "verifying the ID token",
    "assignment": "checking that you are assigned to the app",
    "policy": "applying conditional access policy",
    "hand-off": "returning to the app",
    "session": "making the session",
}

#: The steps at which the identity provider, not the service, failed.
_PROVIDER_STEPS = frozenset({"discovery", "authorization", "token"})

#: A response header: (name, value).
Header = tuple[bytes, bytes]


@attrs.frozen
class Reply:
    """A complete answer to the browser (redirect or page)."""

    status: int
    content_type: bytes = HTML_CONTENT_TYPE
    body: bytes = b""
    headers: tuple[Header, ...] = ()


@attrs.frozen
class Admit:
    """The request may go on to the app, with these identity headers."""

    headers: tuple[Header, ...]
    user: str
    session: Session | None = None
    """The session admitted (a WebSocket is closed when it ends)."""


@attrs.frozen
class Requester:
    """
    Who asked, as replies and the sign-in log name them.

    @ivar client_ip: the client's address (behind trusted proxies resolved).
    @ivar request_id: the request's id, shown on pages and logged.
    @ivar accept: the request's C{Accept} header: HTML or JSON pages.
    @ivar user_agent: its C{User-Agent}, for the sign-in log (if known).
    """

    client_ip: str
    request_id: str
    accept: bytes | None
    user_agent: str | None = None


def redirect(location: str, *headers: Header) -> Reply:
    """A C{302} to C{location}, with C{headers} (cookies) besides."""
    return Reply(status=302, body=b"", headers=((b"location", location.encode("ascii")), *headers))


def error_page(
    status: int,
    title: str,
    detail: str,
    *,
    requester: Requester,
    now: float,
    source: str = "appproxy service",
    headers: Sequence[Header] = (),
) -> Reply:
    """The error page for C{requester}, HTML or JSON as it accepts."""
    answer = error_answer(
        status,
        title,
        detail,
        source=source,
        request_id=requester.request_id,
        now=now,
        accept=requester.accept,
    )
    return Reply(
        status=status, content_type=answer.content_type, body=answer.body, headers=tuple(headers)
    )


def failure_page(
    step: str,
    reason: str,
    *,
    requester: Requester,
    now: float,
    status: int = 401,
    headers: Sequence[Header] = (),
) -> Reply:
    """The page of a sign-in that failed at C{step}, for C{reason}."""
    label = STEP_LABELS.get(step, step)
    return error_page(
        status,
        "Sign-in failed",
        f"The sign-in failed while {label} (step: {step}). {reason}",
        requester=requester,
        now=now,
        source="identity provider" if step in _PROVIDER_STEPS else "appproxy service",
        headers=headers,
    )


def signed_out(app: str, *headers: Header) -> Reply:
    """The page that says the browser is signed out of C{app}."""
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>Signed out</title><main><h1>You are signed out of {escape(app)}</h1>"
        "<p>You can close this window.</p></main></html>"
    ).encode()
    return Reply(status=200, body=body, headers=headers)
