"""
The connector's HTTP/1.1 client (L{appproxy.connector.http1}) beyond what
C{tests/test_connector_http_client.py} pins: llhttp's strict parsing and the
checks on top of it, a bare LF read as a line end in a head (in a head
only), what makes a connection unfit for reuse, an obs-fold split across
reads, request bodies longer than they said, idle connections swept; and,
in memory, that however a response is cut into reads, and whichever of its
heads' line ends are bare LFs, the client makes the same of it.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone, ResponseFailed

from appproxy.connector import pool as pool_module
from appproxy.connector.backend import BackendApp, BackendClient, classify_failure
from appproxy.connector.exchange import BackendResponse
from appproxy.connector.pool import OriginPool
from tests.test_connector_http_client import Body, Collect, fields, settle

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
#: Answers by path: each a list of writes (a short pause between them).
ANSWERS: dict[bytes, list[bytes]] = {
    b"/ok": [OK],
    b"/trailing": [OK + b"HTTP/1.1 200 OK\r\n"],
    b"/list": [b"HTTP/1.1 200 OK\r\nContent-Length: 5 , 5\r\n\r\nhello"],
    b"/repeated": [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"],
    b"/head-bad": [b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 0x10\r\n\r\n"],
    b"/head-extra": [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"],
    b"/fold-split": [
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n",
        b"  fol",
        b"ded\r\nContent-Length: 2\r\n\r\nok",
    ],
}
#: Heads whose lines end in a bare LF (RFC 9112 2.2), as twisted.web's client
#: read them: each the same response as its CRLF version, the connection kept.
BARE_LF: dict[bytes, list[bytes]] = {
    b"/bare-lf": [b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: 1\n\nok"],
    b"/bare-lf-mixed": [
        b"HTTP/1.1 100 Continue\n\nHTTP/1.1 200 OK\r\nX-A: 1\n",
        b" folded\nContent-Length: 2\r\nContent-Length: 2\n",
        b"\r\nok",
    ],
    b"/bare-lf-chunked": [b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\r\nok\r\n0\r\n\r\n"],
}
ANSWERS.update(BARE_LF)
#: Refused as malformed, where twisted.web's client took some of them.
STRICTER: dict[bytes, bytes] = {
    b"/bare-cr": b"HTTP/1.1 200 OK\rContent-Length: 2\r\n\r\nok",
    b"/bare-cr-field": b"HTTP/1.1 200 OK\nX-A: 1\r2\nContent-Length: 2\n\nok",
    b"/cr-cr-lf": b"HTTP/1.1 200 OK\r\nX-A: 1\r\r\nContent-Length: 2\r\n\r\nok",
    b"/te-and-length": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ),
    b"/te-gzip-chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    ),
    b"/switching": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    b"/http2": b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/fold-first": b"HTTP/1.1 200 OK\r\n X-A: 1\r\nContent-Length: 2\r\n\r\nok",
    b"/nul": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
}
ANSWERS.update({path: [raw] for path, raw in STRICTER.items()})


class Backend(Protocol):
    """Reads request heads (and bodies by Content-Length); answers by path."""

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.factory.requests.append((lines[0], rest[:length]))
            self.answer(lines[0].split(b" ")[1])

    def answer(self, path: bytes) -> None:
        writes = list(ANSWERS.get(path, [b"HTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n"]))
        transport = self.transport
        assert transport is not None

        def write() -> None:
            transport.write(writes.pop(0))
            if writes:
                reactor.callLater(0.02, write)

        write()

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.factory.closed += 1


class LiveTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.factory = Factory.forProtocol(Backend)
        self.factory.noisy = False
        self.factory.connections = 0  # type: ignore[attr-defined]
        self.factory.closed = 0  # type: ignore[attr-defined]
        self.factory.requests = []  # type: ignore[attr-defined]
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(self.port.stopListening)
        self.addCleanup(settle)
        self.client = BackendClient(reactor)
        self.addCleanup(self.client.close)
        self.addCleanup(settle)
        self.app = BackendApp("web", timeout=10.0)

    def request(self, path: bytes, method: bytes = b"GET", body: Any = None) -> Deferred[Any]:
        port = self.port.getHost().port  # type: ignore[attr-defined]
        url = b"http://127.0.0.1:%d%s" % (port, path)
        headers = fields((b"host", b"127.0.0.1:%d" % port))
        return self.client.request(self.app, method, url, headers, body, reactor, timed=False)

    @inlineCallbacks
    def fetch(self, path: bytes, method: bytes = b"GET", body: Any = None) -> Any:
        response = yield self.request(path, method, body)
        collect = Collect()
        response.deliverBody(collect)
        data, reason = yield collect.done
        return response, data, reason

    @inlineCallbacks
    def test_bare_lf(self) -> Any:
        """
        Heads whose lines end in a bare LF, or in LF and CRLF mixed (with a
        1xx head, an obs-fold, a repeated length, cut across reads), are
        read as their CRLF versions, over one kept connection.
        """
        expected = [(b"/bare-lf", [(b"content-length", b"2"), (b"x-a", b"1")])]
        expected.append((b"/bare-lf-mixed", [(b"x-a", b"1 folded"), (b"content-length", b"2")]))
        expected.append((b"/bare-lf-chunked", [(b"transfer-encoding", b"chunked")]))
        for path, headers in expected:
            response, data, reason = yield self.fetch(path)
            self.assertEqual((response.code, response.fields, data), (200, headers, b"ok"))
            self.assertTrue(reason.check(ResponseDone))
        self.assertEqual(self.factory.connections, 1)  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_stricter(self) -> Any:
        """
        A bare CR (or CR CR LF), Transfer-Encoding beside Content-Length or
        other than chunked, an unasked-for 101, HTTP/2.0, an obs-fold before
        any field, a NUL: each a malformed response (502 'backend-error').
        """
        for path in STRICTER:
            try:
                yield self.request(path)
            except Exception:
                error = classify_failure(Failure(), "http://internal/", 10.0)
            else:
                self.fail(f"{path!r} accepted")
            self.assertEqual((error.status, error.kind), (502, "backend-error"), path)

    @inlineCallbacks
    def test_lengths_that_agree(self) -> Any:
        """
        A list of one number, or one number repeated, is one length (RFC
        9110 8.6); a response to HEAD keeps its lengths as sent, for the
        tunnel stream to check.
        """
        for path, body in ((b"/list", b"hello"), (b"/repeated", b"ok")):
            response, data, reason = yield self.fetch(path)
            self.assertEqual((response.length, data), (len(body), body))
            self.assertTrue(reason.check(ResponseDone))
        response, data, _ = yield self.fetch(b"/head-bad", b"HEAD")
        self.assertEqual((response.code, data), (200, b""))
        self.assertEqual(response.fields, [(b"x-a", b"1"), (b"content-length", b"0x10")])
        self.assertEqual(self.factory.connections, 1)  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_data_after_response_not_reused(self) -> Any:
        """Bytes after a response: it is delivered, its connection dropped."""
        _, data, reason = yield self.fetch(b"/trailing")
        self.assertEqual(data, b"ok")
        self.assertTrue(reason.check(ResponseDone))
        yield settle()
        _, data, _ = yield self.fetch(b"/ok")
        self.assertEqual((data, self.factory.connections), (b"ok", 2))  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_head_with_body_not_reused(self) -> Any:
        """A response to HEAD that sends a body anyway: the head only, then a new connection."""
        response, data, reason = yield self.fetch(b"/head-extra", b"HEAD")
        self.assertEqual((response.code, data, response.length), (200, b"", 0))
        self.assertTrue(reason.check(ResponseDone))
        yield settle()
        _, data, _ = yield self.fetch(b"/ok")
        self.assertEqual((data, self.factory.connections), (b"ok", 2))  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_fold_split_across_reads(self) -> Any:
        response, data, _ = yield self.fetch(b"/fold-split")
        self.assertEqual(response.headers.getRawHeaders(b"x-a"), [b"1 folded"])
        self.assertEqual(data, b"ok")

    @inlineCallbacks
    def test_body_longer_than_said(self) -> Any:
        """More body than its length: not sent (a second request to the app), a reset."""
        body = Body(b"0123456789")
        body.length = 5
        try:
            yield self.request(b"/ok", b"POST", body)
        except Exception:
            error = classify_failure(Failure(), "http://internal/", 10.0)
        else:
            self.fail("a body longer than it said was sent")
        self.assertEqual(error.kind, "backend-reset")
        self.assertEqual(self.factory.requests, [])  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_idle_connections_swept(self) -> Any:
        self.patch(pool_module, "IDLE_CONNECTION_TIMEOUT", 0.05)
        yield self.fetch(b"/ok")
        for _ in range(200):
            if self.factory.closed:  # type: ignore[attr-defined]
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.factory.closed, 1)  # type: ignore[attr-defined]
        _, data, _ = yield self.fetch(b"/ok")
        self.assertEqual((data, self.factory.connections), (b"ok", 2))  # type: ignore[attr-defined]


class _Endpoint:
    """Connects at once, over a StringTransport."""

    def __init__(self) -> None:
        self.connections: list[tuple[Any, StringTransport]] = []

    def connect(self, factory: Factory) -> Deferred[Any]:
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


RESPONSES = [
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"),
    (
        b"GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    ),
    (
        b"GET",
        b"HTTP/1.1 103 Early\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    ),
    (b"GET", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\tfolded\r\nContent-Length: 2\r\n\r\nok"),
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n"),
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2,2\r\nX-A: 1\r\n \tb\r\n\r\nok"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"),
    (
        b"GET",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n"
        b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    ),
    (b"HEAD", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\tb\r\nContent-Length: 7\r\n\r\n"),
    # An empty line before a status line: llhttp skips it.
    (
        b"GET",
        b"HTTP/1.1 100 Continue\r\n\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\n b\r\n"
        b"Content-Length: 2\r\n\r\nok",
    ),
    (
        b"GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b\r\nok\r\n0\r\nX-T: 1\r\n\r\n",
    ),
]


def _head_spans(raw: bytes) -> list[tuple[int, int]]:
    """Where the heads of a response (its 1xx heads, then its head) are."""
    spans, start = [], 0
    while True:
        end = raw.index(b"\r\n\r\n", start) + 4
        spans.append((start, end))
        if end == len(raw) or not raw.startswith(b"HTTP/1.1 1", start):
            return spans
        start = end


def _bare_lf(raw: bytes, ends: list[bool]) -> bytes:
    """C{raw} with the line ends of its heads bare LFs where C{ends} says (in turn)."""
    out, done, turn = [], 0, itertools.cycle(ends)
    for start, end in _head_spans(raw):
        lines = raw[start:end].split(b"\r\n")
        out += [raw[done:start], lines[0]]
        out += [(b"\n" if next(turn) else b"\r\n") + line for line in lines[1:]]
        done = end
    return b"".join(out) + raw[done:]


#: Refused in memory (in any reads): what the live tests refuse, with its
#: heads' lines ended by bare LFs too (but CR CR LF: that would make CR LF),
#: and a bare CR that only a head parsed again (after an obs-fold) meets.
REFUSED = dict(STRICTER)
REFUSED.update(
    (path + b"-lf", _bare_lf(raw, [True]))
    for path, raw in STRICTER.items()
    if b"\r\n\r\n" in raw and b"\r\r" not in raw
)
REFUSED[b"/bad-end"] = b"HTTP/1.1 200 OK\nContent-Length: 2\n\r\r\nok"
REFUSED[b"/fold-bad-end"] = b"HTTP/1.1 200 OK\nX-A: 1\n b\nContent-Length: 2\n\r\r\n\r\nok"
REFUSED[b"/fold-bare-cr"] = b"HTTP/1.1 200 OK\nX-A: 1\n b\rc\nContent-Length: 2\n\nok"
REFUSED[b"/fold-length-cr"] = b"HTTP/1.1 200 OK\nX-A: 1\n b\nContent-Length: 2\r\r\n\nok"
REFUSED_AS = ("failed", "backend-error", True)


def _cut(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(raw) + 1) for cut in cuts} | {0, len(raw)})
    return [raw[a:b] for a, b in itertools.pairwise(points)]


def _exchange(method: bytes, pieces: list[bytes]) -> tuple[Any, ...]:
    """Feed a response in these pieces; what the reader got, and whether it was pooled."""
    endpoint = _Endpoint()
    pool = OriginPool(Clock(), endpoint)  # type: ignore[arg-type]
    response = BackendResponse(pool, method, method + b" / HTTP/1.1\r\n\r\n", None)
    got: list[Any] = []
    collect = Collect()
    response.deferred.addCallbacks(lambda r: r.deliverBody(collect), got.append)
    collect.done.addCallback(got.append)
    pool.request(response)
    protocol, transport = endpoint.connections[0]
    for piece in pieces:
        protocol.dataReceived(piece)
    [result] = got
    if isinstance(result, Failure):  # the request failed
        pool.close()
        return ("failed", classify_failure(result, "u", 1.0).kind, transport.disconnecting)
    data, reason = result
    pooled = len(pool.idle)
    pool.close()
    return response.code, response.fields, data, reason.type, pooled


class HeadTests(SynchronousTestCase):
    def test_trailing_whitespace_not_kept(self) -> None:
        """OWS after a field value is not part of it (llhttp keeps it)."""
        raw = b"HTTP/1.1 200 OK\r\nX-A: 1 \t\r\nX-B:\t\r\nContent-Length: 0\r\n\r\n"
        _, fields, _, _, _ = _exchange(b"GET", [raw])
        self.assertEqual(fields[:2], [(b"x-a", b"1"), (b"x-b", b"")])

    def test_head_bounded(self) -> None:
        """
        A head that does not end (a field without end, 1xx after 1xx) is
        refused once it passes 64 KiB, its connection closed.
        """
        endless = b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 70_000
        continues = [b"HTTP/1.1 100 Continue\r\n\r\n"] * 3000
        endless_lf = b"HTTP/1.1 200 OK\nX-A: " + b"a" * 70_000
        continues_lf = [b"HTTP/1.1 100 Continue\n\n"] * 3000
        for pieces in (
            [endless[:1000], endless[1000:]],
            continues,
            [endless_lf[:1000], endless_lf[1000:]],
            continues_lf,
        ):
            self.assertEqual(_exchange(b"GET", pieces), REFUSED_AS)
        # A large head that ends within the bound is fine.
        big = b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 60_000 + b"\r\nContent-Length: 0\r\n\r\n"
        self.assertEqual(_exchange(b"GET", [big[:100], big[100:]])[0], 200)

    def test_head_response_bare_lf(self) -> None:
        """
        A response to HEAD whose head ends in bare LFs is kept, unless more
        follows its head (as with CRLFs).
        """
        for end, pooled in ((b"", 1), (b"abc", 0)):
            raw = b"HTTP/1.1 200 OK\nContent-Length: 3\n\n" + end
            for pieces in ([raw], [raw.replace(b"\n", b"\r\n")]):
                self.assertEqual(_exchange(b"HEAD", pieces)[3:], (ResponseDone, pooled))

    def test_chunked_framing_needs_crlf(self) -> None:
        """
        A bare LF in a chunked body's framing or trailer fields, after a head
        with bare LFs or CRLFs, fails the body (as twisted.web's client did),
        though llhttp's leniency would take some of them.
        """
        for head in (b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\n"):
            head += b"Transfer-Encoding: chunked\r\n\r\n"
            for body in (
                b"2\nok\r\n0\r\n\r\n",
                b"2;a=b\nok\r\n0\r\n\r\n",
                b"2\r\nok\n0\r\n\r\n",
                b"2\r\nok\r\n0\n\r\n",
                b"2\r\nok\r\n0\r\n\n",
                b"2\r\nok\r\n0\r\nX-T: 1\n\r\n",
            ):
                result = _exchange(b"GET", [head + body])
                self.assertEqual((result[0], result[3:]), (200, (ResponseFailed, 0)), body)


class SplitTests(SynchronousTestCase):
    @given(st.sampled_from(RESPONSES), st.lists(st.integers(min_value=0, max_value=200)))
    def test_any_split_same_result(self, case: tuple[bytes, bytes], cuts: list[int]) -> None:
        """However a response is cut into reads, the same response, body and reuse."""
        method, raw = case
        whole = _exchange(method, [raw])
        self.assertEqual(_exchange(method, _cut(raw, cuts)), whole)
        self.assertEqual((whole[3], whole[4]), (ResponseDone, 1))

    @given(
        st.sampled_from(RESPONSES),
        st.lists(st.booleans(), min_size=1),
        st.lists(st.integers(min_value=0, max_value=200)),
    )
    def test_bare_lf_same_result(
        self, case: tuple[bytes, bytes], ends: list[bool], cuts: list[int]
    ) -> None:
        """
        Its heads' lines ended by bare LFs (all, some), however cut into
        reads: the same response, body and reuse as with CRLFs.
        """
        method, raw = case
        pieces = _cut(_bare_lf(raw, ends), cuts)
        self.assertEqual(_exchange(method, pieces), _exchange(method, [raw]))

    def test_bare_lf_every_cut(self) -> None:
        """Heads all LF, or LF and CRLF in turn, cut in two at every place."""
        for method, raw in RESPONSES:
            whole = _exchange(method, [raw])
            for ends in ([True], [True, False], [False, True]):
                lf = _bare_lf(raw, ends)
                for cut in range(len(lf) + 1):
                    self.assertEqual(_exchange(method, [lf[:cut], lf[cut:]]), whole, (lf, cut))

    @given(st.sampled_from(sorted(REFUSED)), st.lists(st.integers(min_value=0, max_value=200)))
    def test_refused_however_cut(self, path: bytes, cuts: list[int]) -> None:
        """What the strict mode refuses, in heads with bare LFs too, however cut."""
        self.assertEqual(_exchange(b"GET", _cut(REFUSED[path], cuts)), REFUSED_AS)
