"""
HTTP/2 clients on the public listener, with real clients: C{curl --http2},
C{h2load}, and a raw h2 client (L{tests.h2_client}) that puts
C{content-length} first or repeats it.  The service, the connector and the
backend are the real ones of L{tests.deployment}, over real TLS on loopback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h2.events
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests import deployment
from tests.h2_client import (
    HOST,
    Exchange,
    Session,
    h2_client,
    posts,
    pseudo,
    read_until_done,
    tls_socket,
)


def _ready_connections(d: deployment.Deployment) -> int:
    assert d.service is not None
    return len([c for c in d.service.groups["default"].connections if c.ready])  # type: ignore[attr-defined]


class CurlTests(TestCase):
    """
    C{curl --http2}: a real HTTP/2 client that sends C{content-length} before
    the headers it was given.
    """

    timeout = 60

    @inlineCallbacks
    def test_post_keeps_every_header(self) -> Any:
        """
        An HTTP/2 POST reaches the internal app with its C{Content-Type}, its
        C{Cookie} (appproxy's own cookies removed) and its C{Authorization},
        whatever their place relative to C{content-length}.
        """
        d = yield deployment.start(self)
        ca = Path(self.mktemp())
        ca.write_bytes(d.ca.cert_pem)
        out, err, code = yield getProcessOutputAndValue(
            "/usr/bin/curl",
            [
                "--http2",
                "--silent",
                "--show-error",
                "--max-time",
                "30",
                "--cacert",
                str(ca),
                "--connect-to",
                f"{HOST}:443:127.0.0.1:{d.public_port}",
                "--data",
                "x=1",
                "--header",
                "Cookie: a=b; __Host-appproxy-web=secret",
                "--header",
                "Authorization: Bearer t0ken",
                "--write-out",
                "\n%{http_version} %{http_code}",
                f"https://{HOST}/echo",
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        self.assertEqual(code, 0, err)
        body, _, tail = out.rpartition(b"\n")
        self.assertEqual(tail, b"2 200")
        echo = json.loads(body)
        headers = {name: value for name, value in echo["headers"]}
        self.assertEqual(echo["method"], "POST")
        self.assertEqual(echo["body_length"], 3)
        self.assertEqual(headers.get("content-type"), "application/x-www-form-urlencoded")
        self.assertEqual(headers.get("cookie"), "a=b")
        self.assertEqual(headers.get("authorization"), "Bearer t0ken")
        self.assertEqual(d.backend.hits, 1)


class H2LoadTests(TestCase):
    """
    C{h2load}: many HTTP/2 POSTs in flight on a few connections.
    """

    timeout = 60

    @inlineCallbacks
    def test_posts_under_load(self) -> Any:
        """
        Every POST of a burst reaches the internal app once, with its
        C{Cookie} and C{Content-Type}.
        """
        d = yield deployment.start(self)
        seen: list[tuple[bytes | None, bytes | None]] = []
        render = d.backend.render

        def recording(request: Any) -> Any:
            seen.append((request.getHeader(b"cookie"), request.getHeader(b"content-type")))
            return render(request)

        d.backend.render = recording
        body = Path(self.mktemp())
        body.write_bytes(b"x=1&y=2")
        out, err, code = yield getProcessOutputAndValue(
            "/usr/bin/h2load",
            [
                "--requests=40",
                "--clients=2",
                "--max-concurrent-streams=8",
                f"--connect-to=127.0.0.1:{d.public_port}",
                f"--data={body}",
                "--header=cookie: a=b",
                "--header=content-type: application/x-www-form-urlencoded",
                f"https://{HOST}/echo",
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"40 succeeded", out, out)
        self.assertIn(b"status codes: 40 2xx", out, out)
        self.assertEqual(len(seen), 40)
        self.assertEqual(set(seen), {(b"a=b", b"application/x-www-form-urlencoded")})


class RawH2Tests(TestCase):
    """
    A raw h2 client over TLS: header orders and repetitions browsers and
    hostile clients use.
    """

    timeout = 60

    @inlineCallbacks
    def test_content_length_first(self) -> Any:
        """
        Headers after an early C{content-length} reach the internal app; a
        GET on the same connection is served alongside.
        """
        d = yield deployment.start(self)
        headers = [
            *pseudo(b"POST", b"/echo"),
            (b"content-length", b"5"),
            (b"content-type", b"text/plain"),
            (b"cookie", b"a=b"),
            (b"authorization", b"Basic dTpw"),
            (b"x-late", b"yes"),
        ]
        session = yield deferToThread(posts, d, [headers])
        post, other = session.streams[1], session.streams[3]
        self.assertEqual((post.status, other.status), (200, 200))
        seen = post.headers()
        self.assertEqual(seen.get("content-type"), ["text/plain"])
        self.assertEqual(seen.get("cookie"), ["a=b"])
        self.assertEqual(seen.get("authorization"), ["Basic dTpw"])
        self.assertEqual(seen.get("x-late"), ["yes"])
        self.assertEqual(seen.get("content-length"), ["5"])
        self.assertEqual(post.echo()["body_length"], 5)
        self.assertEqual(other.echo()["uri"], "/echo?other=1")
        self.assertEqual(d.backend.hits, 2)

    @inlineCallbacks
    def test_repeated_content_length(self) -> Any:
        """
        Equal C{content-length} headers repeated make one request to the
        internal app, carrying one C{content-length}; the tunnel carries on
        and the other stream of the connection is served.
        """
        d = yield deployment.start(self)
        before = _ready_connections(d)
        headers = [
            *pseudo(b"POST", b"/echo"),
            (b"content-length", b"4"),
            (b"content-length", b"4"),
            (b"content-type", b"text/plain"),
            (b"content-length", b"4"),
            (b"cookie", b"c=d"),
        ]
        session = yield deferToThread(posts, d, [headers])
        post, other = session.streams[1], session.streams[3]
        self.assertEqual((post.status, other.status), (200, 200))
        seen = post.headers()
        self.assertEqual(seen.get("content-length"), ["4"])
        self.assertEqual(seen.get("content-type"), ["text/plain"])
        self.assertEqual(seen.get("cookie"), ["c=d"])
        self.assertEqual(post.echo()["body_length"], 4)
        self.assertEqual(d.backend.hits, 2)
        self.assertEqual(_ready_connections(d), before)
        # The tunnel still serves.
        again = yield deferToThread(posts, d, [])
        self.assertEqual(again.streams[1].status, 200)

    @inlineCallbacks
    def test_single_fields(self) -> Any:
        """
        Over HTTP/2 too, two C{Content-Type} fields get a 400 on their stream
        and reach nobody; a C{Host} equal to C{:authority} is the same host
        (h2 itself refuses a different one); the connection's other streams
        are served.
        """
        d = yield deployment.start(self)
        post = [*pseudo(b"POST", b"/echo"), (b"content-length", b"2")]
        session = yield deferToThread(
            posts,
            d,
            [
                [*post, (b"content-type", b"a/b"), (b"content-type", b"c/d")],
                [*pseudo(b"GET", b"/echo?same=1"), (b"host", HOST.encode())],
            ],
        )
        statuses = [session.streams[sid].status for sid in (1, 3, 5)]
        self.assertEqual(statuses, [400, 200, 200])
        self.assertEqual(d.backend.hits, 2)


def _early_answer_then_more(d: deployment.Deployment) -> Session:
    """
    A POST the service answers before its body is in (C{/robots.txt} is
    answered at once, whatever the method), the rest of the body and its end
    sent after the answer, then a GET on the same connection.
    """
    session = Session()
    with tls_socket(d) as tls:
        conn = h2_client()
        conn.send_headers(1, [*pseudo(b"POST", b"/robots.txt"), (b"content-length", b"60000")])
        conn.send_data(1, b"x" * 16000)
        tls.sendall(conn.data_to_send())
        answer = session.streams.setdefault(1, Exchange())
        ended = False
        while not ended:  # the answer, ended while the request goes on
            data = tls.recv(65536)
            if not data:
                session.closed = True
                return session
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    answer.status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    answer.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                ended = ended or isinstance(event, h2.events.StreamEnded)
        conn.send_data(1, b"y" * 16000)
        conn.send_data(1, b"w" * 12000)
        conn.send_data(1, b"z" * 16000, end_stream=True)
        conn.send_headers(3, pseudo(b"GET", b"/echo?after=1"), end_stream=True)
        tls.sendall(conn.data_to_send())
        read_until_done(tls, conn, session, [3])
    return session


class EarlyAnswerTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_body_after_the_answer(self) -> Any:
        """
        The rest of a request body that arrives after its response ended
        is dropped (its window given back), not taken for an error of the
        whole connection: the next request on it is served.
        """
        d = yield deployment.start(self)
        session = yield deferToThread(_early_answer_then_more, d)
        self.assertIsNone(session.goaway)
        self.assertFalse(session.closed)
        self.assertEqual(session.streams[1].status, 200)
        self.assertIn(b"Disallow: /", session.streams[1].body)
        self.assertEqual(session.streams[3].status, 200)
        self.assertEqual(session.streams[3].echo()["uri"], "/echo?after=1")
