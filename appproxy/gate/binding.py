"""
The binding of a sign-in to the browser that began it, on the app's host.

When the app's host sends a browser to sign in, it sets a short-lived cookie
of its own, C{__Host-appproxy-bind-<id>}, holding a random value, and the
sign-in carries a L{BrowserBinding} (the id and a SHA-256 digest of the
value) inside its sealed values: the sign-in request, the flow cookie on the
login host, and the hand-off.  The app's host takes the hand-off only from a
browser that presents the cookie whose digest matches, so a hand-off link
sent to someone else (login CSRF) signs nobody in.

Each sign-in has a cookie of its own, so tabs signing in side by side do not
disturb each other; a browser that already holds L{MAX_PENDING_BINDINGS} of
them (scripts polling an app whose session ended) reuses one instead of
piling up cookies until its requests are too large.

Pure: no reactor, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping

import attrs

from appproxy.gate.paths import FLOW_LIFETIME, HAND_OFF_LIFETIME
from appproxy.http.cookies import set_cookie

__all__ = [
    "BINDING_COOKIE_PREFIX",
    "BINDING_LIFETIME",
    "MAX_PENDING_BINDINGS",
    "BrowserBinding",
    "bind_browser",
]

BINDING_COOKIE_PREFIX = "__Host-appproxy-bind-"
#: How long the cookie lives: a sign-in, one step-up sign-in, the hand-off.
BINDING_LIFETIME = 2 * FLOW_LIFETIME + HAND_OFF_LIFETIME
#: How many binding cookies a browser may hold at once on one host.
MAX_PENDING_BINDINGS = 8

_ID = re.compile(r"[0-9a-f]{16}\Z")
_DIGEST = re.compile(r"[0-9a-f]{64}\Z")
_VALUE = re.compile(r"[A-Za-z0-9_-]{43}\Z")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("ascii")).hexdigest()


@attrs.frozen
class BrowserBinding:
    """
    What a sign-in knows of the browser that began it.

    @ivar id: names the cookie (16 hex digits).
    @ivar digest: SHA-256 of the cookie's value, hex.
    """

    id: str = attrs.field(validator=attrs.validators.matches_re(_ID))
    digest: str = attrs.field(validator=attrs.validators.matches_re(_DIGEST))

    @property
    def cookie_name(self) -> str:
        return BINDING_COOKIE_PREFIX + self.id

    def to_text(self) -> str:
        """The binding as the sealed values carry it."""
        return f"{self.id}.{self.digest}"

    @classmethod
    def from_text(cls, text: object) -> BrowserBinding | None:
        """The binding L{to_text} gave, or L{None} for anything else."""
        if not isinstance(text, str):
            return None
        id_, _, digest = text.partition(".")
        if not (_ID.match(id_) and _DIGEST.match(digest)):
            return None
        return cls(id_, digest)

    def presented_by(self, cookies: Mapping[str, str]) -> bool:
        """Does a browser sending C{cookies} hold this binding's cookie?"""
        value = cookies.get(self.cookie_name)
        if not value or not value.isascii():
            return False
        return hmac.compare_digest(_digest(value), self.digest)


def bind_browser(
    cookies: Mapping[str, str], value: str | None = None
) -> tuple[BrowserBinding, tuple[bytes, bytes] | None]:
    """
    Bind a new sign-in to the browser that sends C{cookies}: a new binding
    and the C{Set-Cookie} header that gives the browser its cookie; or, when
    the browser holds L{MAX_PENDING_BINDINGS} already, one of those and no
    header.

    @param value: the cookie's value (random unless given: tests).
    """
    pending = sorted(
        name
        for name, held in cookies.items()
        if name.startswith(BINDING_COOKIE_PREFIX)
        and _ID.match(name[len(BINDING_COOKIE_PREFIX) :])
        and _VALUE.match(held)
    )
    if len(pending) >= MAX_PENDING_BINDINGS:
        name = pending[0]
        return BrowserBinding(name[len(BINDING_COOKIE_PREFIX) :], _digest(cookies[name])), None
    if value is None:
        value = secrets.token_urlsafe(32)
    binding = BrowserBinding(secrets.token_hex(8), _digest(value))
    return binding, set_cookie(binding.cookie_name, value, max_age=BINDING_LIFETIME)
