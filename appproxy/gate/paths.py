"""
The names the sign-in gate reserves: the C{/.appproxy/...} paths on the login
host and on every app's host, how long a sign-in and a hand-off may take, and
the flow cookie that binds a sign-in to the browser that started it.

Pure: no reactor, no I/O.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "FLOW_COOKIE_PREFIX",
    "FLOW_LIFETIME",
    "HAND_OFF_LIFETIME",
    "HAND_OFF_PATH",
    "SIGN_IN_PATH",
    "SIGN_OUT_PATH",
    "flow_cookie_name",
]

#: The path on the login host that starts a sign-in.
SIGN_IN_PATH = "/.appproxy/sign-in"
#: Paths on every app host that signs users in.
HAND_OFF_PATH = b"/.appproxy/session"
SIGN_OUT_PATH = b"/.appproxy/sign-out"
#: How long a sign-in may take, from the app's redirect to the callback.
FLOW_LIFETIME = 600
#: How long the hand-off from the login host to the app's host is valid.
HAND_OFF_LIFETIME = 60
FLOW_COOKIE_PREFIX = "__Host-appproxy-flow-"


def flow_cookie_name(state: str) -> str:
    """The flow cookie of the sign-in whose C{state} is C{state}."""
    return FLOW_COOKIE_PREFIX + hashlib.sha256(state.encode("ascii")).hexdigest()[:16]
