"""
The WebSockets of one service process: counted per app and per user (the
caps C{max_websockets} and C{websockets_per_user}, checked before a
handshake is forwarded), and closed when their session ends.

A handshake takes its place (L{WebSocketRegistry.admit}) before it is
queued, so that a burst of handshakes cannot pass the caps while they wait
for the app's answer; it gives the place back if the app refuses or the
way fails.  Every second (while any is open) L{WebSocketRegistry.sweep}
closes the WebSockets whose session ended: signed out or revoked (the
revocations the gate checks requests against, which
L{appproxy.gate.sessions} keeps current: C{appproxy sessions revoke}, a
disabled user), or past its lifetime: a close frame 1008 "session ended".
A passthrough app's WebSockets have no session: they are only counted.
When the service stops, L{WebSocketRegistry.close_all} closes every open
WebSocket with 1001 "service stopping".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from appproxy.access.session import Session

__all__ = [
    "GOING_AWAY",
    "POLICY_VIOLATION",
    "SWEEP_INTERVAL",
    "Full",
    "OpenWebSocket",
    "WebSocketRegistry",
]

#: Close codes the service sends (RFC 6455 7.4.1): the session ended; the
#: service, the tunnel or the app's connector going away (or an idle
#: timeout).  Written out here, not read from wsproto, so that the registry
#: (built at start) does not import wsproto before the first WebSocket.
POLICY_VIOLATION: Final = 1008
GOING_AWAY: Final = 1001

#: How often (seconds) open WebSockets are checked against their sessions.
SWEEP_INTERVAL = 1.0

#: Closes one WebSocket: (who closed it, why (for the log), close code,
#: close reason (for the client)).
Closer = Callable[[str, str, int, str], None]

#: A session's standing as the gate sees it: "valid", "revoked" or "unknown".
Standing = Callable[[Session, float], str]


@attrs.frozen
class Full:
    """A handshake the caps refuse: the status (503, 429) and the page's words."""

    status: int
    title: str
    detail: str


@attrs.define(eq=False)
class OpenWebSocket:
    """One WebSocket, from its admission to its end."""

    app: str
    user: str | None
    session: Session | None
    request_id: str
    close: Closer | None = None
    """Set once the WebSocket is open (the app said 101): closes it."""


@attrs.define(eq=False)
class WebSocketRegistry:
    """The open (and opening) WebSockets, per app and per user."""

    clock: IReactorTime
    per_user: int = 50
    """C{[service] websockets_per_user}."""
    standing: Standing | None = None
    """The gate's session check (set with the sign-in machinery)."""
    _by_app: dict[str, set[OpenWebSocket]] = attrs.field(factory=dict)
    _by_user: dict[str, set[OpenWebSocket]] = attrs.field(factory=dict)
    _loop: LoopingCall | None = attrs.field(default=None)
    closing: set[OpenWebSocket] = attrs.field(factory=set)
    """Closed by L{close_all}, their client's connection not gone yet."""

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_app.values())

    def count(self, *, app: str | None = None, user: str | None = None) -> int:
        """How many WebSockets C{app} (or C{user}) has open or opening."""
        if app is not None:
            return len(self._by_app.get(app, ()))
        return len(self._by_user.get(user or "", ()))

    def admit(
        self,
        *,
        app: str,
        max_websockets: int,
        user: str | None,
        session: Session | None,
        request_id: str,
    ) -> OpenWebSocket | Full:
        """A place for one more WebSocket to C{app}, or why there is none."""
        if len(self._by_app.get(app, ())) >= max_websockets:
            return Full(
                503,
                "Too many WebSockets",
                f"{app} has as many WebSockets open as it may ({max_websockets}). Try again later.",
            )
        if user is not None and len(self._by_user.get(user, ())) >= self.per_user:
            return Full(
                429,
                "Too many WebSockets",
                f"You have as many WebSockets open as you may ({self.per_user})."
                " Close some (other tabs or windows), then try again.",
            )
        entry = OpenWebSocket(app=app, user=user, session=session, request_id=request_id)
        self._by_app.setdefault(app, set()).add(entry)
        if user is not None:
            self._by_user.setdefault(user, set()).add(entry)
        return entry

    def opened(self, entry: OpenWebSocket, close: Closer) -> None:
        """C{entry} is open now; C{close} ends it (the sweep calls it)."""
        entry.close = close
        if entry.session is not None and self._loop is None:
            self._loop = LoopingCall(self.sweep)
            self._loop.clock = self.clock
            self._loop.start(SWEEP_INTERVAL, now=False)

    def release(self, entry: OpenWebSocket) -> None:
        """C{entry} ended (or never opened): its place is free (once)."""
        entry.close = None
        for table, key in ((self._by_app, entry.app), (self._by_user, entry.user)):
            if key is None:
                continue
            entries = table.get(key)
            if entries is not None:
                entries.discard(entry)
                if not entries:
                    del table[key]
        if not self._by_user and self._loop is not None:
            if self._loop.running:
                self._loop.stop()
            self._loop = None

    def ended(self, session: Session, now: float) -> str | None:
        """Why C{session} has ended, or L{None} while it is in force."""
        if now >= session.expires_at:
            return "the session's lifetime passed"
        standing = self.standing(session, now) if self.standing is not None else "valid"
        if standing == "revoked":
            return "the session was ended (signed out, revoked, or the user disabled)"
        if standing == "unknown":
            return "the ended sessions cannot be read, so the session cannot be checked"
        return None

    def sweep(self) -> None:
        """Close every open WebSocket whose session has ended."""
        now = self.clock.seconds()
        ending: list[tuple[OpenWebSocket, str]] = []
        for entries in self._by_user.values():
            for entry in entries:
                if entry.session is None or entry.close is None:
                    continue
                why = self.ended(entry.session, now)
                if why is not None:
                    ending.append((entry, why))
        for entry, why in ending:
            if entry.close is not None:
                entry.close("session-ended", why, POLICY_VIOLATION, "session ended")

    def close_all(self, who: str, why: str, reason: str) -> int:
        """
        Close every open WebSocket (1001 C{reason}); how many were open.
        L{closing} holds them until their client's connection is gone.
        """
        entries = [e for table in self._by_app.values() for e in table if e.close is not None]
        self.closing.update(entries)
        for entry in entries:
            if entry.close is not None:
                entry.close(who, why, GOING_AWAY, reason)
        return len(entries)

    def client_gone(self, entry: OpenWebSocket) -> None:
        """The client's connection of C{entry} is closed."""
        self.closing.discard(entry)
