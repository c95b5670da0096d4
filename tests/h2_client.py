"""
A raw HTTP/2 client for tests: the C{h2} library over a blocking TLS socket
(ALPN h2) to the deployment's public listener, to be run in a thread
(C{deferToThread}) while the reactor serves.  It sends headers in the order
it is given, without validation, as a browser or a hostile client would.
"""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

import attrs
import h2.config
import h2.connection
import h2.events

from tests import deployment

HOST = f"web.{deployment.DOMAIN}"

#: Bound on every socket operation of the raw client.
SOCKET_TIMEOUT = 20.0


@attrs.define
class Exchange:
    """What one stream got back."""

    status: int = 0
    body: bytes = b""
    reset: int | None = None

    def echo(self) -> dict[str, Any]:
        """The echo backend's report of the request it saw."""
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded

    def headers(self) -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {}
        for name, value in self.echo()["headers"]:
            seen.setdefault(name, []).append(value)
        return seen


@attrs.define
class Session:
    """What a raw HTTP/2 connection got back."""

    streams: dict[int, Exchange] = attrs.Factory(dict)
    goaway: int | None = None
    closed: bool = False


def tls_socket(d: deployment.Deployment) -> ssl.SSLSocket:
    context = ssl.create_default_context(cadata=d.ca.cert_pem.decode("ascii"))
    context.set_alpn_protocols(["h2"])
    sock = socket.create_connection(("127.0.0.1", d.public_port), timeout=SOCKET_TIMEOUT)
    tls = context.wrap_socket(sock, server_hostname=HOST)
    assert tls.selected_alpn_protocol() == "h2", tls.selected_alpn_protocol()
    return tls


def h2_client() -> h2.connection.H2Connection:
    # No outbound validation or normalisation: the point is to send what a
    # browser (or a hostile client) sends, in its order.
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    return conn


def read_until_done(
    tls: ssl.SSLSocket, conn: h2.connection.H2Connection, session: Session, streams: list[int]
) -> None:
    """Read until every stream in C{streams} ended, or the server closed."""
    for sid in streams:
        session.streams.setdefault(sid, Exchange())
    while any(sid in conn.streams and not conn.streams[sid].closed for sid in streams) and not (
        session.closed or session.goaway is not None
    ):
        try:
            data = tls.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            session.closed = True
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers)[b":status"]
                session.streams[event.stream_id].status = int(status)
            elif isinstance(event, h2.events.DataReceived):
                session.streams[event.stream_id].body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                session.streams[event.stream_id].reset = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                session.goaway = event.error_code
        tls.sendall(conn.data_to_send())


def pseudo(method: bytes, path: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method),
        (b":scheme", b"https"),
        (b":authority", HOST.encode()),
        (b":path", path),
    ]


def posts(d: deployment.Deployment, requests: list[list[tuple[bytes, bytes]]]) -> Session:
    """
    Send each header list in C{requests} on its own stream of one
    connection (a C{content-length} header is followed by that many bytes of
    body, else none), plus one plain GET; read every response.
    """
    session = Session()
    with tls_socket(d) as tls:
        conn = h2_client()
        streams = []
        for headers in requests:
            sid = conn.get_next_available_stream_id()
            streams.append(sid)
            length = dict(headers).get(b"content-length")
            conn.send_headers(sid, headers, end_stream=length is None)
            if length is not None:
                conn.send_data(sid, b"x" * int(length), end_stream=True)
        sid = conn.get_next_available_stream_id()
        streams.append(sid)
        conn.send_headers(sid, pseudo(b"GET", b"/echo?other=1"), end_stream=True)
        tls.sendall(conn.data_to_send())
        read_until_done(tls, conn, session, streams)
    return session
