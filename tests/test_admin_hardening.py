"""
The admin and metrics listeners against a hostile client (the real service
in process, real TLS on loopback; blocking sockets in a thread, every read
bounded by a timeout): a request body refused with 413 before it is read,
caps on open connections, a header deadline, HTTP/1.1 only by ALPN, and
an access log without query values.
"""

from __future__ import annotations

import io
import socket
import ssl
import time
from pathlib import Path
from typing import Any, cast

import attrs
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web import http

from appproxy.http.ratelimit import ConnectionCounts
from tests.deployment import DOMAIN
from tests.fakeprovider import FakeProvider, serve_tls
from tests.test_admin_api import HOST, AdminDeployment
from tests.trust_harness import DEVICE_CLIENT, ISSUER

#: Seconds any one read or connect may take.
TIMEOUT = 10.0


class _Deployment(AdminDeployment):
    """The admin deployment with the metrics listener too."""

    def write_service_config(self, public: int = 0, tunnel: int = 0) -> Path:
        path = super().write_service_config(public, tunnel)
        path.write_text(path.read_text() + '\n[metrics]\nlisten = "tcp:0:interface=127.0.0.1"\n')
        return path


def _start(testcase: TestCase) -> _Deployment:
    """As L{tests.test_admin_api.start_admin}, with the metrics listener."""
    provider = FakeProvider(issuer=ISSUER, client_id=DEVICE_CLIENT)
    served = serve_tls(provider, reactor)
    testcase.addCleanup(served.stop)
    apps = [{"name": "web", "external_url": f"https://web.{DOMAIN}/"}]
    deployment = _Deployment(testcase, apps, 5.0)
    deployment.provider, deployment.served = provider, served
    deployment.start_service()
    return deployment


def _port(listening: Any) -> int:
    return cast(IPv4Address, listening.getHost()).port


def _site(factory: Any) -> Any:
    """
    The twisted.web HTTP factory under a listener's wrapping factories: the
    admin listener's site, or the metrics listener's server.
    """
    while not isinstance(factory, http.HTTPFactory):
        factory = factory.wrappedFactory
    return factory


def _tls(port: int, alpn: list[str] | None = None) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn or ["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return context.wrap_socket(raw, server_hostname=HOST)


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (bounded by L{TIMEOUT} per read)."""
    sock.settimeout(TIMEOUT)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return data


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed C{sock} (within L{TIMEOUT})."""
    sock.settimeout(TIMEOUT)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


class AdminHardeningTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.deployment = _start(self)
        service = self.deployment.service
        assert service is not None
        self.service = service
        self.admin = _port(service.admin_port)
        self.metrics = _port(service.metrics.port)

    def _connect(self, which: str) -> socket.socket:
        if which == "admin":
            return _tls(self.admin)
        return socket.create_connection(("127.0.0.1", self.metrics), timeout=TIMEOUT)

    def _factories(self) -> dict[str, Any]:
        port: Any = self.service.metrics.port
        return {"admin": self.service.admin.factory, "metrics": port.factory}

    @inlineCallbacks
    def test_body_refused_before_it_is_read(self) -> Any:
        """A body over a few bytes or chunked: 413 and closed, without a token and unread."""

        def exchange(which: str, framing: bytes, body: bytes = b"x" * 4096) -> bytes:
            with self._connect(which) as sock:
                sock.sendall(
                    b"POST /admin/v1/sign-ins HTTP/1.1\r\nHost: %s\r\n%s\r\n\r\n"
                    % (HOST.encode(), framing)
                    + body
                )
                return _read_all(sock)

        for which in ("admin", "metrics"):
            for framing in (b"Content-Length: 300000000", b"Transfer-Encoding: chunked"):
                answer = yield deferToThread(exchange, which, framing)
                self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), (which, framing, answer))
        # No body (the sign-out form sends none): answered as before (the API: 405).
        answer = yield deferToThread(
            exchange, "admin", b"Content-Length: 0\r\nConnection: close", b""
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 405 "), answer)

    @inlineCallbacks
    def test_connection_caps(self) -> Any:
        """Past the cap per address (or in all), a new connection is closed at once."""
        for which, factory in self._factories().items():
            factory.counts = ConnectionCounts(per_address=3, total=100)

            port = self.admin if which == "admin" else self.metrics

            def over(port: int = port) -> bool:
                # Plain TCP connections that send nothing (not even TLS).
                held = [socket.create_connection(("127.0.0.1", port), TIMEOUT) for _ in range(3)]
                try:
                    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as extra:
                        return _closed(extra)
                finally:
                    for sock in held:
                        sock.close()

            refused = yield deferToThread(over)
            self.assertTrue(refused, which)
            # Once they are closed, connections are accepted again.
            deadline = time.monotonic() + TIMEOUT
            while factory.counts.open and time.monotonic() < deadline:
                yield deferToThread(time.sleep, 0.05)
            self.assertEqual(factory.counts.open, 0, which)

    @inlineCallbacks
    def test_header_deadline(self) -> Any:
        """A client trickling its header block is cut off at the deadline."""
        for which, factory in self._factories().items():
            deadlines = _site(factory).client_deadlines
            deadlines.limits = attrs.evolve(deadlines.limits, header_timeout=1.0)

            def trickle(which: str = which) -> tuple[float, bytes]:
                started = time.monotonic()
                with self._connect(which) as sock:
                    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    sock.settimeout(0.2)
                    data = b""
                    while time.monotonic() - started < 3 * TIMEOUT:
                        try:
                            sock.sendall(b"X-A: b\r\n")
                            chunk = sock.recv(4096)
                        except TimeoutError:
                            continue
                        except (OSError, ssl.SSLError):
                            break
                        if not chunk:
                            break
                        data += chunk
                return time.monotonic() - started, data

            took, data = yield deferToThread(trickle)
            self.assertLess(took, TIMEOUT, which)
            self.assertTrue(data.startswith(b"HTTP/1.1 408 "), (which, data))

    @inlineCallbacks
    def test_http11_only(self) -> Any:
        """A client offering h2 first gets HTTP/1.1 (ALPN)."""

        def negotiate() -> str | None:
            with _tls(self.admin, ["h2", "http/1.1"]) as sock:
                return sock.selected_alpn_protocol()

        self.assertEqual((yield deferToThread(negotiate)), "http/1.1")

    @inlineCallbacks
    def test_access_log_hides_query(self) -> Any:
        """The sign-in callback's code and state never reach the access log."""
        site = _site(self.service.admin.factory)
        written = io.StringIO()
        site._logFile = written

        def get() -> bytes:
            with _tls(self.admin) as sock:
                sock.sendall(
                    b"GET /admin/callback?code=SECRETCODE&state=SECRETSTATE HTTP/1.1\r\n"
                    b"Host: %s\r\nConnection: close\r\n\r\n" % HOST.encode()
                )
                return _read_all(sock)

        answer = yield deferToThread(get)
        self.assertTrue(answer.startswith(b"HTTP/1.1 "), answer)
        line = written.getvalue()
        self.assertIn("/admin/callback?code=...&state=...", line)
        self.assertNotIn("SECRET", line)
