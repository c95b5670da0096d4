"""
The connector's persistent connections to internal apps: one L{AppClient}
per app (its TLS policy), one L{OriginPool} of idle keep-alive connections
per origin of that app.

A request is checked and written as one head (method, target, fields and
the body's framing) before any connection is taken: what HTTP/1.1 cannot
carry (a space or a non-ASCII byte in the target, a method that is not a
token, a CR or LF in a field) is refused with C{ValueError} at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS

from appproxy.connector.http1 import DONE, HEAD, BackendConnection, BackendResponse

#: Idle persistent connections kept per internal host.
MAX_PERSISTENT_PER_HOST = 64
#: Seconds an idle persistent connection is kept.
IDLE_CONNECTION_TIMEOUT = 60
#: Seconds to establish a TCP connection to the internal app.
CONNECT_TIMEOUT = 10

_URL = re.compile(rb"(https?)://([^/?#]+)(.*)", re.S)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A request target HTTP/1.1 can carry: visible ASCII, no space.
_TARGET = re.compile(rb"[!-~]+")
#: Header fields as written, one per line: a token, then a value without
#: CR, LF or other control characters but tab.
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [\t\x20-\x7e\x80-\xff]*\r\n)*")
_SPECIAL = re.compile(rb"(?:^|\n)(host|content-length|transfer-encoding):", re.I)
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class _Factory(Factory):
    noisy = False

    def __init__(self, pool: OriginPool) -> None:
        self.pool = pool

    def buildProtocol(self, addr: Any) -> BackendConnection:
        return BackendConnection(self.pool)


class OriginPool:
    """The idle keep-alive connections to one origin of one app."""

    def __init__(self, reactor: Any, endpoint: IStreamClientEndpoint) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.factory = _Factory(self)
        self.idle: list[BackendConnection] = []
        """Oldest first; the newest is taken first."""
        self.sweep: Any = None
        self.closed = False

    def request(self, response: BackendResponse) -> None:
        """Send on the newest idle connection, or on a new one."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.aborted:
                conn.reused = True
                conn.send(response)
                return
        self.connect(response)

    def connect(self, response: BackendResponse) -> None:
        d = self.endpoint.connect(self.factory)
        response.connecting = d
        d.addCallbacks(
            self._connected, self._failed, callbackArgs=(response,), errbackArgs=(response,)
        )

    def _connected(self, conn: BackendConnection, response: BackendResponse) -> None:
        response.connecting = None
        if response.state != HEAD:  # cancelled meanwhile
            conn.transport.loseConnection()  # type: ignore[union-attr]
            return
        conn.send(response)

    def _failed(self, failure: Any, response: BackendResponse) -> None:
        response.connecting = None
        if response.state == HEAD and not response.deferred.called:
            response.state = DONE
            response.deferred.errback(failure)

    def put(self, conn: BackendConnection) -> None:
        """Keep an idle connection for the next request."""
        if self.closed:
            conn.transport.loseConnection()  # type: ignore[union-attr]
            return
        conn.idle_since = self.reactor.seconds()
        idle = self.idle
        idle.append(conn)
        if len(idle) > MAX_PERSISTENT_PER_HOST:
            idle.pop(0).transport.loseConnection()  # type: ignore[union-attr]
        if self.sweep is None:
            self.sweep = self.reactor.callLater(IDLE_CONNECTION_TIMEOUT, self._sweep)

    def forget(self, conn: BackendConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def _sweep(self) -> None:
        """Close the connections idle for C{IDLE_CONNECTION_TIMEOUT}."""
        self.sweep = None
        now = self.reactor.seconds()
        old = [c for c in self.idle if now - c.idle_since >= IDLE_CONNECTION_TIMEOUT]
        for conn in old:
            self.idle.remove(conn)
            conn.transport.loseConnection()  # type: ignore[union-attr]
        if self.idle:
            due = self.idle[0].idle_since + IDLE_CONNECTION_TIMEOUT - now
            self.sweep = self.reactor.callLater(max(0.0, due), self._sweep)

    def close(self) -> Deferred[Any]:
        """Close the idle connections; later returns are closed, not kept."""
        self.closed = True
        if self.sweep is not None and self.sweep.active():
            self.sweep.cancel()
        self.sweep = None
        idle, self.idle = self.idle, []
        return gatherResults([conn.close() for conn in idle])


def _host_port(scheme: bytes, authority: bytes) -> tuple[str, int]:
    if authority.startswith(b"["):
        host, _, rest = authority[1:].partition(b"]")
        port = rest[1:] if rest.startswith(b":") else b""
        if rest and not rest.startswith(b":"):
            raise ValueError(f"malformed authority {authority!r}")
    else:
        host, _, port = authority.partition(b":")
    if port and not port.isdigit():
        raise ValueError(f"malformed port in {authority!r}")
    number = int(port) if port else (443 if scheme == b"https" else 80)
    return host.decode("ascii"), number


class AppClient:
    """Requests to one app: its TLS policy, a pool per origin."""

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS) -> None:
        self.reactor = reactor
        self.policy = policy
        self.pools: dict[tuple[bytes, bytes], OriginPool] = {}

    def _pool(self, scheme: bytes, authority: bytes) -> OriginPool:
        host, port = _host_port(scheme, authority)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self.reactor, host, port, timeout=CONNECT_TIMEOUT
        )
        if scheme == b"https":
            creator = self.policy.creatorForNetloc(host.encode("ascii"), port)
            endpoint = wrapClientTLS(creator, endpoint)
        pool = self.pools[scheme, authority] = OriginPool(self.reactor, endpoint)
        return pool

    def request(
        self,
        method: bytes,
        url: bytes,
        headers: Headers | Sequence[tuple[bytes, bytes]],
        body: Any,
    ) -> Deferred[BackendResponse]:
        """
        Send a request; fires with its L{BackendResponse} once its head is here.

        @raise ValueError: HTTP/1.1 cannot carry the request as it is.
        """
        match = _URL.fullmatch(url)
        if match is None:
            return fail(SchemeNotSupported(f"unsupported URL {url[:16]!r}"))
        scheme, authority, target = match.groups()
        if not target:
            target = b"/"
        elif target[0] == 63:  # "?"
            target = b"/" + target
        if _TARGET.fullmatch(target) is None:
            raise ValueError(f"request target {target!r} cannot be sent")
        if _TOKEN.fullmatch(method) is None:
            raise ValueError(f"method {method!r} cannot be sent")
        pool = self.pools.get((scheme, authority))
        if pool is None:
            pool = self._pool(scheme, authority)
        if isinstance(headers, Headers):
            headers = [(n, v) for n, values in headers.getAllRawHeaders() for v in values]
        block = b"\r\n".join(map(b": ".join, headers))
        if block:
            block += b"\r\n"
        if _FIELDS.fullmatch(block) is None:
            raise ValueError("a header field cannot be sent")
        special = _SPECIAL.findall(block)
        if special:
            names = {name.lower() for name in special}
            if names & _FRAMING:
                # The framing is this client's to write.
                kept = [(n, v) for n, v in headers if n.lower() not in _FRAMING]
                block = b"".join(b"%s: %s\r\n" % field for field in kept)
            if b"host" not in names:
                block = b"host: " + authority + b"\r\n" + block
        else:
            block = b"host: " + authority + b"\r\n" + block
        if body is None:
            if method == b"POST" or method == b"PUT":
                block += b"content-length: 0\r\n"
        elif isinstance(body.length, int):
            block += b"content-length: %d\r\n" % body.length
        else:
            block += b"transfer-encoding: chunked\r\n"
        head = b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, block)
        response = BackendResponse(pool, method, head, body)
        pool.request(response)
        return response.deferred

    def close(self) -> Deferred[Any]:
        pools = list(self.pools.values())
        self.pools.clear()
        return gatherResults([pool.close() for pool in pools])
