"""
The request as the internal app gets it: the fields the client sent, minus
what the service owns (hop-by-hop fields, forwarding fields, spoofed
identity headers, appproxy's cookies), plus the forwarding fields, the
request id and the identity headers the gate admitted it with; and the
path on the internal app.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from appproxy.config import AppConfig
from appproxy.frontend.routing import internal_path
from appproxy.http.forwarding import ip_text
from appproxy.http.headers import prepare_request_headers
from appproxy.identity.headers import strip_appproxy_cookies, strip_spoofed_headers

if TYPE_CHECKING:
    from appproxy.frontend.request import ProxyRequest

__all__ = ["internal_target", "prepared_headers"]


def prepared_headers(
    request: ProxyRequest,
    app: AppConfig,
    identity: Sequence[tuple[bytes, bytes]],
    *,
    websocket: bool = False,
) -> list[tuple[bytes, bytes]]:
    """
    C{request}'s fields for C{app}, with C{identity} (the gate's identity
    headers and assertion).

    @param websocket: the request is a WebSocket handshake, already judged
        well-formed: its C{Connection} field (which named C{upgrade}) is left
        out whole, so that no C{Sec-WebSocket-*} field it might also name is
        dropped with it; C{Upgrade} is dropped as every hop-by-hop field is.
    """
    host = request.host_field
    if host is None:
        host = request.requestHeaders.getRawHeaders(b"host", [b""])[0]
    raw = [
        (name, value)
        for name, values in request.requestHeaders.getAllRawHeaders()
        if not (websocket and name.lower() == b"connection")
        for value in values
    ]
    raw = strip_appproxy_cookies(strip_spoofed_headers(raw, request.frontend.protected_headers))
    if len(request.requestHeaders.getRawHeaders(b"content-length", ())) > 1:
        raw = _one_content_length(raw, request.length)
    headers = prepare_request_headers(
        raw,
        client_address=ip_text(request._resolved_client_ip()),
        external_host=host.decode("latin-1"),
        request_id=request.request_id,
        internal_netloc=app.internal_netloc,
    )
    headers.extend(identity)
    return headers


def internal_target(app: AppConfig, uri: bytes) -> bytes:
    """The path and query on the internal app of C{uri} (the request target)."""
    target = internal_path(app.external_path, app.internal_path, uri.decode("latin-1"))
    return target.encode("latin-1")


def _one_content_length(
    headers: list[tuple[bytes, bytes]], length: int | None
) -> list[tuple[bytes, bytes]]:
    """
    C{headers} with at most one C{content-length}, where the first one was.

    HTTP/2 lets a field repeat, and the HTTP/2 parser accepts repeated equal
    C{content-length} values (it refuses unequal ones); an HTTP/1.1 back end
    refuses a request with two.
    """
    places = [i for i, (name, _) in enumerate(headers) if name.lower() == b"content-length"]
    if len(places) < 2 or length is None:
        return headers
    drop = set(places[1:])
    kept = [header for i, header in enumerate(headers) if i not in drop]
    kept[places[0]] = (b"content-length", b"%d" % length)
    return kept
