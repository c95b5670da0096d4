"""
HTTP/1.1 strictness (RFC 9112) on the public listener, with raw TLS sockets
against the real service: each malformed request gets a 400 and a closed
connection, and nothing of it reaches a connector or the internal app.  The
pure rules behind it (L{appproxy.http.fields}, L{appproxy.http.paths}) are
tested directly, with Hypothesis.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appproxy.http.fields import single_field_problem
from appproxy.http.paths import has_dot_segments
from tests import deployment
from tests.deployment import raw_exchange

HOST = f"Host: web.{deployment.DOMAIN}\r\n".encode()
GOOD = b"GET /echo HTTP/1.1\r\n" + HOST + b"\r\n"


class SingleFieldTests(SynchronousTestCase):
    def test_examples(self) -> None:
        host = (b"Host", [b"a.example"])
        self.assertIsNone(single_field_problem([host]))
        self.assertIsNone(single_field_problem([host, (b"Content-Type", [b"text/plain"])]))
        self.assertEqual(single_field_problem([]), "The request has no Host header.")
        self.assertEqual(
            single_field_problem([(b"Host", [b"a.example", b"a.example"])]),
            "The request has more than one Host header.",
        )
        self.assertEqual(
            single_field_problem([host, (b"content-type", [b"a/b", b"c/d"])]),
            "The request has more than one Content-Type header.",
        )

    def test_http2_authority_and_host(self) -> None:
        """Over HTTP/2, C{:authority} and an equal C{Host} are one host."""
        same = [(b"host", [b"a.example", b"a.example"])]
        self.assertIsNone(single_field_problem(same, http2=True))
        other = [(b"host", [b"a.example", b"b.example"])]
        self.assertIsNotNone(single_field_problem(other, http2=True))

    @given(st.lists(st.sampled_from([b"x-a", b"accept", b"cookie", b"host", b"content-type"])))
    def test_property(self, names: list[bytes]) -> None:
        """A problem exactly when Host is not there once or Content-Type repeats."""
        fields = [(name, [b"v"]) for name in names]
        ok = names.count(b"host") == 1 and names.count(b"content-type") <= 1
        self.assertEqual(single_field_problem(fields) is None, ok)


_SEGMENT = st.text(
    alphabet=st.characters(codec="ascii", exclude_characters="/\\?%;"), min_size=1, max_size=8
)
_DOTS = st.sampled_from([".", ".."])


def _hide(text: str, how: int) -> str:
    """C{text} percent-encoded 0, 1 or 2 times over."""
    for _ in range(how):
        text = quote(text, safe="")
    return text


class DotSegmentTests(SynchronousTestCase):
    @given(st.lists(_SEGMENT.filter(lambda s: s not in (".", "..")), max_size=5))
    def test_plain_paths_pass(self, segments: list[str]) -> None:
        self.assertFalse(has_dot_segments("/" + "/".join(segments)))

    @given(
        st.lists(_SEGMENT, max_size=3),
        _DOTS,
        st.sampled_from(["/", "\\", ";x/", ";/"]),
        st.integers(min_value=0, max_value=2),
        st.lists(_SEGMENT, max_size=3),
    )
    def test_hidden_dots_found(
        self, before: list[str], dots: str, after: str, how: int, rest: list[str]
    ) -> None:
        """C{.} or C{..}, percent-encoded up to twice, followed by a separator."""
        hidden = _hide(dots + after, how)
        path = "/" + "/".join([*before, hidden + "/".join(rest)])
        self.assertTrue(has_dot_segments(path), path)


class _RecordingBackend(Protocol):
    """A raw internal app: records the bytes it gets, answers 200, closes."""

    def __init__(self, received: list[bytes]) -> None:
        self.received = received
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n\r\n" in self.data and self.transport is not None:
            self.received.append(self.data)
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            )
            self.transport.loseConnection()


class _RecordingQueue:
    """A connector group's queue that records the jobs put in it."""

    def __init__(self, queue: Any, queued: list[Any]) -> None:
        self.queue, self.queued = queue, queued

    def put(self, job: Any, on_timeout: Any) -> None:
        self.queued.append(job)
        self.queue.put(job, on_timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)


class _RecordingGroups:
    """The front end's connector groups, whose queues record their jobs."""

    def __init__(self, groups: Any, queued: list[Any]) -> None:
        self.groups, self.queued = groups, queued

    def __getitem__(self, name: str) -> _RecordingQueue:
        return _RecordingQueue(self.groups[name], self.queued)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.groups, name)


class StrictnessTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def assertRefused(self, raw: bytes, backend: bool = False) -> Any:
        """
        C{raw} gets a 400 and the connection is closed (a good request
        pipelined after it is never answered); nothing is queued for a
        connector, nothing reaches the internal app.
        """
        received: list[bytes] = []
        apps = None
        if backend:
            factory = Factory.forProtocol(lambda: _RecordingBackend(received))
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
            self.addCleanup(port.stopListening)
            apps = [
                {
                    "name": "web",
                    "external_url": f"https://web.{deployment.DOMAIN}/",
                    "internal_url": f"http://127.0.0.1:{cast(IPv4Address, port.getHost()).port}/",
                }
            ]
        d = yield deployment.start(self, apps=apps)
        assert d.service is not None
        queued: list[Any] = []
        frontend: Any = d.service.frontend
        frontend.groups = _RecordingGroups(frontend.groups, queued)
        reply = yield raw_exchange(d, raw + GOOD)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply[:300])
        self.assertEqual(reply.count(b"HTTP/1.1 "), 1, reply)
        self.assertEqual(queued, [])
        self.assertEqual(d.backend.hits, 0)
        if backend:
            # The next request reaches the raw app; the refused one never did.
            response = yield d.client().get(d.url("web", "/after"))
            self.assertEqual(response.code, 200)
            yield response.content()
            self.assertEqual(len(received), 1, received)
            self.assertTrue(received[0].startswith(b"GET /after "), received)

    def test_obs_fold_space(self) -> Any:
        return self.assertRefused(b"GET /echo HTTP/1.1\r\n" + HOST + b"X-A: 1\r\n 2\r\n\r\n")

    def test_obs_fold_tab(self) -> Any:
        return self.assertRefused(b"GET /echo HTTP/1.1\r\n" + HOST + b"X-A: 1\r\n\t2\r\n\r\n")

    def test_obs_fold_of_host(self) -> Any:
        return self.assertRefused(
            b"GET /echo HTTP/1.1\r\nHost:\r\n web." + deployment.DOMAIN.encode() + b"\r\n\r\n"
        )

    def test_no_host(self) -> Any:
        return self.assertRefused(b"GET /echo HTTP/1.1\r\nAccept: */*\r\n\r\n")

    def test_two_hosts(self) -> Any:
        return self.assertRefused(b"GET /echo HTTP/1.1\r\n" + HOST + HOST + b"\r\n")

    def test_two_content_types(self) -> Any:
        return self.assertRefused(
            b"POST /echo HTTP/1.1\r\n"
            + HOST
            + b"Content-Type: text/plain\r\nContent-Type: application/json\r\n"
            + b"Content-Length: 2\r\n\r\nhi"
        )

    def test_bad_first_chunk_size(self) -> Any:
        """The header block of a badly chunked body never reaches the app."""
        return self.assertRefused(
            b"POST /echo HTTP/1.1\r\n"
            + HOST
            + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            backend=True,
        )

    def test_encoded_dot_segments(self) -> Any:
        paths = [b"/..%2fetc", b"/%2e%2e%2fetc", b"/..%5cetc", b"/..;/etc", b"/a/%252e%252e/b"]
        return _each(
            self.assertRefused, [b"GET " + p + b" HTTP/1.1\r\n" + HOST + b"\r\n" for p in paths]
        )


@inlineCallbacks
def _each(check: Any, raws: list[bytes]) -> Any:
    for raw in raws:
        yield check(raw)


class ChunkedTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_chunked_post_still_streams(self) -> Any:
        """A well-formed chunked POST, empty or not, goes through."""
        d = yield deployment.start(self)
        for body, length in [(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 11), (b"0\r\n\r\n", 0)]:
            reply = yield raw_exchange(
                d,
                b"POST /echo HTTP/1.1\r\n"
                + HOST
                + b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                + body,
            )
            self.assertTrue(reply.startswith(b"HTTP/1.1 200 "), reply[:300])
            self.assertIn(b'"body_length": %d' % length, reply)
