"""
A WebSocket handshake on its way in: judged before anything else is done
with it, then (once the sign-in gate admitted it) counted against the caps
and queued for a connector as an upgraded job.

Refused before anything is queued: a malformed handshake (400), another
protocol version (426, with C{Sec-WebSocket-Version: 13}), an app whose
WebSockets are off (403), a foreign C{Origin} (403: cross-site WebSocket
hijacking), and, after the gate, too many WebSockets for the app (503) or
for the user (429).  A request whose C{Upgrade} does not name C{websocket}
(C{h2c} above all) is an ordinary request, forwarded without it.

HTTP/1.1 only: over HTTP/2 a handshake needs the extended CONNECT of RFC
8441, which the public listener does not offer, so an HTTP/2 request is
never judged here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appproxy.access.session import Session
from appproxy.config import AppConfig
from appproxy.frontend.prepare import internal_target, prepared_headers
from appproxy.frontend.ws_registry import Full
from appproxy.http.websocket import VERSION, HandshakeKind, classify_handshake, origin_allowed
from appproxy.tunnel.queue import ProxyJob

if TYPE_CHECKING:
    from appproxy.frontend.request import ProxyRequest

__all__ = ["forward_websocket", "judge_handshake"]


def judge_handshake(request: ProxyRequest, app: AppConfig) -> bool | None:
    """
    Judge C{request} to C{app}, an HTTP/1.1 request with an C{Upgrade}
    field: C{True}, a WebSocket handshake to go on with (sign-in, then
    L{forward_websocket}); C{False}, not one (an ordinary request); L{None},
    refused (the answer is on its way).
    """
    method, _, version = request._head
    fields = [
        (name, value)
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
    ]
    handshake = classify_handshake(method, version, fields)
    if handshake.kind is HandshakeKind.NOT_UPGRADE:
        return False
    if handshake.kind is HandshakeKind.MALFORMED:
        request._refuse_malformed(handshake.detail)
        return None
    if handshake.kind is HandshakeKind.WRONG_VERSION:
        request.responseHeaders.setRawHeaders(b"sec-websocket-version", [VERSION])
        request.responseHeaders.setRawHeaders(b"upgrade", [b"websocket"])
        request._respond_error_soon(426, "Upgrade required", handshake.detail)
        return None
    if not app.websocket:
        request._respond_error_soon(
            403, "WebSockets not enabled", "WebSockets are not enabled for this app."
        )
        return None
    if not origin_allowed(
        request.requestHeaders.getRawHeaders(b"origin", []),
        app.external_origin,
        app.websocket_origins,
    ):
        request._respond_error_soon(
            403,
            "Cross-site WebSocket refused",
            f"Only pages of {app.external_origin} may open WebSockets to {app.name}.",
        )
        return None
    return True


def forward_websocket(
    request: ProxyRequest,
    app: AppConfig,
    identity: tuple[tuple[bytes, bytes], ...] | tuple[()],
    user: str | None,
    session: Session | None,
) -> None:
    """
    Queue the admitted handshake C{request} for a connector of C{app}'s
    group, as an upgraded job, if the caps leave room.
    """
    registry = request.frontend.websockets
    place = registry.admit(
        app=app.name,
        max_websockets=app.max_websockets,
        user=user,
        session=session,
        request_id=request.request_id,
    )
    if isinstance(place, Full):
        request._respond_error_soon(place.status, place.title, place.detail)
        return
    # The relay and wsproto's frame parser under it are imported at the first
    # WebSocket, not at start: a service whose apps carry none does not keep
    # them in memory (docs/performance.md).
    from appproxy.frontend.ws_relay import WebSocketExchange

    exchange = WebSocketExchange(request, app, registry, place)
    request._job = ProxyJob(
        app=app,
        method=b"GET",
        path=internal_target(app, request.uri),
        headers=prepared_headers(request, app, identity, websocket=True),
        request_id=request.request_id,
        has_body=False,
        exchange=exchange,
        upgrade=True,
    )
    request._enqueue(request._job)
