"""
The whole path on loopback: TLS client -> service -> HTTP/2 tunnel ->
connector -> backend, with real TLS and the real daemons' services.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.interfaces import IReactorSSL
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests import deployment
from tests.deployment import h2_exchange, h2_stalled_download, raw_exchange


class RoundTripTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_get(self) -> Any:
        """
        A GET goes through and the backend sees the internal Host, the path
        and a request id.
        """
        d = yield deployment.start(self)
        response = yield d.client().get(d.url("web", "/echo?x=1"))
        self.assertEqual(response.code, 200)
        body = json.loads((yield response.content()))
        self.assertEqual(body["method"], "GET")
        self.assertEqual(body["uri"], "/echo?x=1")
        headers = dict((k, v) for k, v in body["headers"])
        self.assertEqual(headers["host"], f"127.0.0.1:{d.backend_port.getHost().port}")
        self.assertEqual(len(headers["x-request-id"]), 32)

    @inlineCallbacks
    def test_streamed_post(self) -> Any:
        """
        A 5 MiB POST arrives intact.
        """
        d = yield deployment.start(self)
        payload = os.urandom(5 * 1024 * 1024)
        response = yield d.client().post(d.url("web", "/echo"), data=payload)
        self.assertEqual(response.code, 200)
        body = json.loads((yield response.content()))
        self.assertEqual(body["body_length"], len(payload))
        self.assertEqual(body["body_sha256"], hashlib.sha256(payload).hexdigest())


class HeaderTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_robots_txt(self) -> Any:
        """
        robots.txt is answered by the service and never forwarded.
        """
        d = yield deployment.start(self)
        response = yield d.client().get(d.url("web", "/robots.txt"))
        self.assertEqual(response.code, 200)
        self.assertEqual((yield response.content()), b"User-agent: *\nDisallow: /\n")
        self.assertEqual(d.backend.hits, 0)

    @inlineCallbacks
    def test_forwarded_and_hop_by_hop(self) -> Any:
        """
        Hop-by-hop headers (and those named in Connection) are removed, and
        the X-Forwarded-* headers are the service's, never the client's.
        """
        d = yield deployment.start(self)
        response = yield d.client().get(
            d.url("web", "/echo"),
            headers={
                "Connection": "X-Secret, keep-alive",
                "X-Secret": "drop me",
                "Keep-Alive": "timeout=5",
                "X-Forwarded-For": "203.0.113.9",
                "X-Forwarded-Host": "evil.example",
                "X-Request-Id": "client-chosen",
                "X-AppProxy-User": "admin",
                "X-Kept": "yes",
            },
        )
        body = json.loads((yield response.content()))
        headers: dict[str, list[str]] = {}
        for k, v in body["headers"]:
            headers.setdefault(k, []).append(v)
        self.assertNotIn("x-secret", headers)
        self.assertNotIn("keep-alive", headers)
        self.assertNotIn("x-appproxy-user", headers)
        self.assertEqual(headers["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(headers["x-forwarded-host"], [f"web.{deployment.DOMAIN}"])
        self.assertEqual(headers["x-forwarded-proto"], ["https"])
        self.assertNotEqual(headers["x-request-id"], ["client-chosen"])
        self.assertEqual(headers["x-kept"], ["yes"])

    @inlineCallbacks
    def test_location_and_cookie_translated(self) -> Any:
        """
        Internal URLs in Location and Set-Cookie become external ones; foreign
        URLs are left alone.
        """
        d = yield deployment.start(self)
        client = d.client()
        internal = d.backend_url
        response = yield client.get(
            d.url("web", "/redirect"), params={"to": internal + "next?a=1"}, allow_redirects=False
        )
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders("location"), [d.url("web", "/next?a=1")])
        response = yield client.get(
            d.url("web", "/redirect"),
            params={"to": "https://elsewhere.example/x"},
            allow_redirects=False,
        )
        self.assertEqual(
            response.headers.getRawHeaders("location"), ["https://elsewhere.example/x"]
        )
        response = yield client.get(
            d.url("web", "/cookie"), params={"c": "sid=1; Domain=127.0.0.1; Path=/; HttpOnly"}
        )
        yield response.content()
        self.assertEqual(
            response.headers.getRawHeaders("set-cookie"),
            [f"sid=1; Domain=web.{deployment.DOMAIN}; Path=/; HttpOnly"],
        )

    @inlineCallbacks
    def test_unknown_host(self) -> Any:
        """
        An unknown host gets a 404 page with the host name escaped.
        """
        d = yield deployment.start(self)
        response = yield d.client().get(
            d.url("nothere", "/"), headers={"Host": "<script>x</script>.appproxy.test"}
        )
        self.assertEqual(response.code, 404)
        page = yield response.content()
        self.assertNotIn(b"<script>", page)
        self.assertIn(b"&lt;script&gt;", page)
        self.assertEqual(d.backend.hits, 0)


class ErrorTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def assertErrorPage(self, response: Any, status: int, *needles: str) -> Any:
        self.assertEqual(response.code, status)
        page = (yield response.content()).decode()
        request_id = response.headers.getRawHeaders("x-request-id")[0]
        self.assertIn(request_id, page)
        for needle in needles:
            self.assertIn(needle, page)
        self.assertNotIn("Traceback", page)

    @inlineCallbacks
    def test_no_connector(self) -> Any:
        """
        No connector of the group within the queue timeout: 503 naming the app.
        """
        d = yield deployment.start(
            self,
            apps=[
                {
                    "name": "lonely",
                    "external_url": f"https://lonely.{deployment.DOMAIN}/",
                    "connector_group": "nobody",
                }
            ],
            queue_timeout=0.5,
        )
        response = yield d.client().get(d.url("lonely", "/"))
        yield self.assertErrorPage(response, 503, "No connector is available for lonely")

    @inlineCallbacks
    def test_no_connector_json(self) -> Any:
        """
        Clients that ask for JSON get the error as JSON.
        """
        d = yield deployment.start(
            self,
            apps=[
                {
                    "name": "lonely",
                    "external_url": f"https://lonely.{deployment.DOMAIN}/",
                    "connector_group": "nobody",
                }
            ],
            queue_timeout=0.3,
        )
        response = yield d.client().get(
            d.url("lonely", "/"), headers={"Accept": "application/json"}
        )
        self.assertEqual(response.code, 503)
        body = json.loads((yield response.content()))
        self.assertEqual(body["status"], 503)
        self.assertEqual(body["source"], "connector")
        self.assertEqual(body["request_id"], response.headers.getRawHeaders("x-request-id")[0])

    @inlineCallbacks
    def test_backend_down(self) -> Any:
        """
        The internal app refuses the connection: 502 naming the app, not its
        internal address.
        """
        d = yield deployment.start(
            self,
            apps=[
                {
                    "name": "down",
                    "external_url": f"https://down.{deployment.DOMAIN}/",
                    "internal_url": "http://127.0.0.1:1/",
                }
            ],
        )
        response = yield d.client().get(d.url("down", "/"))
        yield self.assertErrorPage(
            response, 502, f"down (https://down.{deployment.DOMAIN}/) cannot be reached"
        )

    @inlineCallbacks
    def test_backend_timeout(self) -> Any:
        """
        No response within the app's backend timeout: 504.
        """
        d = yield deployment.start(
            self,
            apps=[
                {
                    "name": "slow",
                    "external_url": f"https://slow.{deployment.DOMAIN}/",
                    "backend_timeout": 0.5,
                }
            ],
        )
        response = yield d.client().get(d.url("slow", "/slow?delay=5"))
        yield self.assertErrorPage(response, 504, "did not answer in time")


class MalformedRequestTests(TestCase):
    """
    Malformed requests get 400, the connection is closed, and nothing
    reaches the backend.
    """

    timeout = 60

    @inlineCallbacks
    def assertRefused(self, raw: bytes) -> Any:
        d = yield deployment.start(self)
        reply = yield raw_exchange(d, raw)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400"), reply[:200])
        self.assertEqual(d.backend.hits, 0)

    host = f"Host: web.{deployment.DOMAIN}\r\n".encode()

    def test_conflicting_content_length(self) -> Any:
        return self.assertRefused(
            b"POST /echo HTTP/1.1\r\n"
            + self.host
            + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
        )

    def test_content_length_and_transfer_encoding(self) -> Any:
        return self.assertRefused(
            b"POST /echo HTTP/1.1\r\n"
            + self.host
            + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )

    def test_bad_chunking(self) -> Any:
        return self.assertRefused(
            b"POST /echo HTTP/1.1\r\n"
            + self.host
            + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
        )

    def test_oversized_header(self) -> Any:
        return self.assertRefused(
            b"GET /echo HTTP/1.1\r\n" + self.host + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n"
        )

    def test_too_many_headers(self) -> Any:
        many = b"".join(b"X-H%d: 1\r\n" % i for i in range(150))
        return self.assertRefused(b"GET /echo HTTP/1.1\r\n" + self.host + many + b"\r\n")

    def test_bare_lf(self) -> Any:
        return self.assertRefused(b"GET /echo HTTP/1.1\r\n" + self.host + b"X-A: 1\nX-B: 2\r\n\r\n")

    def test_nul_in_header(self) -> Any:
        return self.assertRefused(b"GET /echo HTTP/1.1\r\n" + self.host + b"X-A: a\x00b\r\n\r\n")


def _busy_connectors(d: deployment.Deployment) -> list[Any]:
    return [c for c in d.connectors if any(p._busy() for p in c.factory.protocols)]


@inlineCallbacks
def _wait_until(predicate: Any, timeout: float = 10.0) -> Any:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        yield deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition not reached in time")


def _kill(connector: Any) -> None:
    """
    Kill a connector the hard way: its connections drop without GOAWAY and
    it never comes back.
    """
    connector.factory.draining = True
    for service in list(connector):
        service.stopService()
    for protocol in list(connector.factory.protocols):
        protocol.abort()


class FailureTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_connector_killed_idempotent_retried(self) -> Any:
        """
        A connector dies while a GET is in flight: the GET is retried on the
        other connector of the group and succeeds.
        """
        d = yield deployment.start(self, connectors=2, connections=1)
        pending = d.client().get(d.url("web", "/slow?delay=0.5"))
        yield _wait_until(lambda: d.backend.hits >= 1)
        [victim] = _busy_connectors(d)
        _kill(victim)
        response = yield pending
        self.assertEqual(response.code, 200)
        body = json.loads((yield response.content()))
        self.assertEqual(body["uri"], "/slow?delay=0.5")
        self.assertEqual(d.backend.hits, 2)

    @inlineCallbacks
    def test_connector_killed_post_fails_cleanly(self) -> Any:
        """
        A POST whose body already went to the internal app is not replayed:
        the user gets a 502 page, not a hang.
        """
        d = yield deployment.start(self, connectors=2, connections=1)
        pending = d.client().post(d.url("web", "/slow?delay=2"), data=b"x" * 1000)
        yield _wait_until(lambda: d.backend.hits >= 1)
        for victim in _busy_connectors(d):
            _kill(victim)
        response = yield pending
        self.assertEqual(response.code, 502)
        page = yield response.content()
        self.assertIn(b"was lost before it answered", page)
        self.assertEqual(d.backend.hits, 1)

    @inlineCallbacks
    def test_service_restart(self) -> Any:
        """
        After a service restart on the same ports, the connector reconnects
        by itself and requests flow again.
        """
        d = yield deployment.start(self, connectors=1, connections=2)
        public, tunnel = d.public_port, d.tunnel_port
        assert d.service is not None
        yield d.service.stopService()
        d.start_service(public=public, tunnel=tunnel)
        yield d.wait_for_connections(2, timeout=20)
        response = yield d.client().get(d.url("web", "/echo"))
        self.assertEqual(response.code, 200)
        yield response.content()

    @inlineCallbacks
    def test_two_connectors_share_load(self) -> Any:
        """
        Concurrent requests spread over both connectors of a group.
        """
        d = yield deployment.start(self, connectors=2, connections=1)
        served: dict[int, int] = {0: 0, 1: 0}

        def count() -> None:
            for i, connector in enumerate(d.connectors):
                if any(p._busy() for p in connector.factory.protocols):
                    served[i] += 1

        client = d.client()
        requests = [client.get(d.url("web", "/slow?delay=1")) for _ in range(10)]
        yield _wait_until(lambda: d.backend.hits >= 10)
        count()
        responses = yield gatherResults(requests)
        self.assertEqual([r.code for r in responses], [200] * 10)
        for response in responses:
            yield response.content()
        streams = [c.factory.streams_started for c in d.connectors]
        self.assertEqual(sum(streams), 10)
        self.assertTrue(all(n >= 3 for n in streams), streams)
        self.assertEqual(served, {0: 1, 1: 1})

    @inlineCallbacks
    def test_connector_drains_on_stop(self) -> Any:
        """
        A connector stopped with a request in flight finishes it (GOAWAY
        drain) and takes no new ones.
        """
        d = yield deployment.start(self, connectors=1, connections=1)
        pending = d.client().get(d.url("web", "/slow?delay=0.5"))
        yield _wait_until(lambda: d.backend.hits >= 1)
        stopped = d.connectors[0].stopService()
        response = yield pending
        self.assertEqual(response.code, 200)
        yield response.content()
        yield stopped
        self.assertEqual(len(d.connectors[0].factory.protocols), 0)


class HTTP2ClientTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_h2_get_and_post(self) -> Any:
        """
        Browsers speaking HTTP/2 (ALPN h2) are served too, bodies included.
        """
        d = yield deployment.start(self)
        payload = os.urandom(300_000)
        result = yield h2_exchange(
            d,
            [
                ("GET", "/echo?h2=1", b""),
                ("POST", "/echo", payload),
            ],
        )
        (status1, body1), (status2, body2) = result
        self.assertEqual(status1, 200)
        self.assertEqual(json.loads(body1)["uri"], "/echo?h2=1")
        self.assertEqual(status2, 200)
        self.assertEqual(json.loads(body2)["body_sha256"], hashlib.sha256(payload).hexdigest())


class ReloadTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_reload_adds_app(self) -> Any:
        """
        After a reload an app added to the file is served, with its settings
        pushed to the connected connector; the running connections stay.
        """
        d = yield deployment.start(self)
        assert d.service is not None
        response = yield d.client().get(d.url("added", "/echo"))
        self.assertEqual(response.code, 404)
        yield response.content()
        d.apps.append({"name": "added", "external_url": f"https://added.{deployment.DOMAIN}/"})
        d.write_service_config(d.public_port, d.tunnel_port)
        d.service.reload()
        yield _wait_until(lambda: "added" in d.connectors[0].backend.apps)
        response = yield d.client().get(d.url("added", "/echo"))
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads((yield response.content()))["uri"], "/echo")

    @inlineCallbacks
    def test_bad_reload_keeps_running_config(self) -> Any:
        """
        A reload with a broken file is refused; the service keeps serving.
        """
        d = yield deployment.start(self)
        assert d.service is not None
        before = d.service.config
        (d.root / "service.toml").write_text("[service]\nlisten = 443\n")
        d.service.reload()
        self.assertIs(d.service.config, before)
        errors = self.flushLoggedErrors()
        self.assertEqual(errors, [])
        response = yield d.client().get(d.url("web", "/echo"))
        self.assertEqual(response.code, 200)
        yield response.content()


class BackendTLSTests(TestCase):
    """
    The connector verifies the internal app's certificate: against the
    app's CA bundle, or the system trust store; never skipped unless the
    administrator said so.
    """

    timeout = 60

    @inlineCallbacks
    def https_backend(self, d: deployment.Deployment) -> Any:
        from twisted.internet.ssl import PrivateCertificate
        from twisted.web import server

        from appproxy.daemon import pki

        internal_ca = pki.generate_ca("internal CA")
        pair = pki.issue_server_certificate(internal_ca, ["localhost"])
        (d.root / "internal-ca.pem").write_bytes(internal_ca.cert_pem)
        options = PrivateCertificate.loadPEM(pair.cert_pem + pair.key_pem).options()
        port = cast(IReactorSSL, reactor).listenSSL(
            0, server.Site(d.backend), options, interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        return f"https://localhost:{cast(IPv4Address, port.getHost()).port}/"
        yield

    @inlineCallbacks
    def test_verification(self) -> Any:
        d = yield deployment.start(self, connectors=0)
        url = yield self.https_backend(d)
        d.apps[:] = [
            {
                "name": "pinned",
                "external_url": f"https://pinned.{deployment.DOMAIN}/",
                "internal_url": url,
                "backend_ca": "internal-ca.pem",
            },
            {
                "name": "system",
                "external_url": f"https://system.{deployment.DOMAIN}/",
                "internal_url": url,
            },
            {
                "name": "unchecked",
                "external_url": f"https://unchecked.{deployment.DOMAIN}/",
                "internal_url": url,
                "verify_backend_tls": False,
            },
        ]
        assert d.service is not None
        d.write_service_config(d.public_port, d.tunnel_port)
        d.service.reload()
        d.start_connector(connections=1)
        yield d.wait_for_connections(1)
        client = d.client()
        response = yield client.get(d.url("pinned", "/echo"))
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads((yield response.content()))["uri"], "/echo")
        response = yield client.get(d.url("system", "/echo"))
        self.assertEqual(response.code, 502)
        self.assertIn(b"could not be established", (yield response.content()))
        response = yield client.get(d.url("unchecked", "/echo"))
        self.assertEqual(response.code, 200)
        yield response.content()


class MethodTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_head(self) -> Any:
        """
        HEAD: the length of the GET is announced, no body follows, and the
        connection stays usable.
        """
        d = yield deployment.start(self)
        client = d.client()
        response = yield client.head(d.url("web", "/bytes?n=1000"))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-length"), ["1000"])
        self.assertEqual((yield response.content()), b"")
        response = yield client.get(d.url("web", "/bytes?n=1000"))
        self.assertEqual((yield response.content()), b"x" * 1000)

    @inlineCallbacks
    def test_refused_methods(self) -> Any:
        """
        TRACE is refused by the service and never forwarded.
        """
        d = yield deployment.start(self)
        response = yield d.client().request("TRACE", d.url("web", "/echo"))
        self.assertEqual(response.code, 405)
        yield response.content()
        self.assertEqual(d.backend.hits, 0)


class SlowReaderTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_h2_client_huge_window_not_reading(self) -> Any:
        """
        An HTTP/2 client that advertises a huge window and stops reading does
        not make the service buffer the response: the tunnel stream is held
        once about 1 MiB waits for the client.
        """
        d = yield deployment.start(self)
        size = 64 * 1024 * 1024
        client = yield h2_stalled_download(d, f"/bytes?n={size}")
        yield deferLater(reactor, 1.5, lambda: None)
        [tunnel_received] = [
            p.bytes_received for p in d.service.tunnel_factory.protocols if p.bytes_received
        ]
        self.assertLess(tunnel_received, 8 * 1024 * 1024)
        # Reading again, the client gets everything.
        received = yield client.resume_and_finish()
        self.assertEqual(received, size)
