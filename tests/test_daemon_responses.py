"""
Responses as users' clients get them, through the real daemons
(C{twistd appproxy}, C{twistd appproxy-connector}, the installed code) and
real C{curl}, for an app published under a path
(C{https://demo.example.test:PORT/ext/} in front of a backend's C{/int/}):

  - the backend's C{Content-Length} reaches HTTP/1.1 clients (no chunked
    encoding: browsers show download progress) and HTTP/2 clients; C{HEAD},
    C{204} and C{304} stay right; a malformed or conflicting length from the
    backend gets a 502 for that request only, and the tunnel carries on;
  - a backend's head whose lines end in bare LFs (RFC 9112 2.2) is read as
    its CRLF twin;
  - C{Set-Cookie} paths keep their trailing slash, and another site's cookie
    is left alone;
  - C{/robots.txt} is the service's own answer on the app's host, though no
    app is published at its root.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web import resource, server, static

from tests.test_daemons import APP, DOMAIN, Process, free_ports, init, replace_once, twistd

#: A size that is no multiple of anything a buffer would use.
FILE_SIZE = 3 * 1024 * 1024 + 7
#: Bound on each curl run.
CURL_MAX_TIME = "20"
#: Bound on waiting for the connector's tunnel to carry the first request.
READY_TIMEOUT = 20.0

#: Backend answers written as they are, then the connection closed.
RAW_ANSWERS = {
    b"conflicting": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"malformed": b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nhello",
    b"negative": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
    b"list": b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
    # The length a 200 would have had: never to be sent with an empty body.
    b"not-modified": b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n',
    b"no-content": b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
}
#: Heads whose lines end in bare LFs (some, all), as legacy apps send them,
#: and their CRLF twins: each the same response to users' clients.
BARE_LF = {
    b"lf": b"HTTP/1.1 100 Continue\n\nHTTP/1.1 200 OK\nX-A: 1\n folded\r\nContent-Length: 5\n"
    b"Content-Length: 5\r\n\n",
    b"lf-crlf": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n"
    b"Content-Length: 5\r\nContent-Length: 5\r\n\r\n",
    b"lf-chunked": b"HTTP/1.1 200 OK\nX-A: 1\nTransfer-Encoding: chunked\n\n",
    b"lf-chunked-crlf": b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
}
RAW_ANSWERS.update(
    (name, head + (b"5\r\nhello\r\n0\r\n\r\n" if b"chunked" in name else b"hello"))
    for name, head in BARE_LF.items()
)
#: Answers to HEAD: the length is the client's to check here.
RAW_HEAD_ANSWERS = {
    b"conflicting": b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
    b"malformed": b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
    b"negative": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    b"list": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    b"not-modified": b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n',
    b"no-content": b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
}
RAW_HEAD_ANSWERS.update(BARE_LF)


class _Raw(resource.Resource):
    """Writes one of the raw answers on the connection and closes it."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        answers = RAW_HEAD_ANSWERS if request.method == b"HEAD" else RAW_ANSWERS
        transport = request.channel.transport
        transport.write(answers[request.postpath[0]])
        transport.loseConnection()
        return server.NOT_DONE_YET


class _Cookies(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.responseHeaders.setRawHeaders(
            b"set-cookie",
            [
                b"app=1; Path=/int/; HttpOnly",
                b"sub=1; Path=/int/sub/",
                b"sso=1; Domain=login.corp.example; Path=/int/",
            ],
        )
        return b"ok"


def _backend(file: Path) -> resource.Resource:
    app = resource.Resource()
    app.putChild(b"file.bin", static.File(str(file)))
    app.putChild(b"raw", _Raw())
    app.putChild(b"cookies", _Cookies())
    root = resource.Resource()
    root.putChild(b"int", app)
    return root


class _Response:
    """Status, headers (lowercase names, every value) and body of one curl run."""

    def __init__(self, out: bytes, body: bytes) -> None:
        head = out.split(b"\r\n\r\n")[-2] if b"\r\n\r\n" in out else out
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split()[1])
        self.headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return ",".join(values) if values else None


class _Deployment:
    def __init__(self, testcase: TestCase, state: Path, public: int) -> None:
        self.testcase = testcase
        self.state = state
        self.host = f"{APP}.{DOMAIN}:{public}"
        self.service: Process
        self.connector: Process
        self.downloads = Path(testcase.mktemp())
        self.downloads.mkdir()
        self.runs = 0

    @inlineCallbacks
    def curl(self, path: str, *args: str, http: str = "--http1.1") -> Any:
        """C{curl} C{https://HOST{path}} with C{args}; its L{_Response}."""
        self.runs += 1
        # With -I, curl writes the headers where the body would go.
        body_file = Path(os.devnull) if "-I" in args else self.downloads / f"body-{self.runs}"
        out, err, code = yield getProcessOutputAndValue(
            "curl",
            [
                *("-sS", "--max-time", CURL_MAX_TIME, http, "-D", "-", "-o", str(body_file)),
                *("--resolve", f"{self.host}:127.0.0.1", "--cacert", str(self.state / "ca.pem")),
                *args,
                f"https://{self.host}{path}",
            ],
        )
        self.testcase.assertEqual(code, 0, f"curl {path} {args}: {err!r}\n{self.describe()}")
        return _Response(out, body_file.read_bytes() if body_file.is_file() else b"")

    def describe(self) -> str:
        return f"{self.service.describe()}\n{self.connector.describe()}"


@inlineCallbacks
def deploy(testcase: TestCase) -> Any:
    """
    C{appproxy init} for an app published at C{/ext/} (passthrough) in front
    of a backend's C{/int/} serving a file of L{FILE_SIZE} random bytes; the
    service and a connector started, and a request through them answered.
    """
    file = Path(testcase.mktemp())
    file.write_bytes(os.urandom(FILE_SIZE))
    site: Any = server.Site(_backend(file))
    backend = reactor.listenTCP(0, site, interface="127.0.0.1")
    testcase.addCleanup(backend.stopListening)
    public, tunnel = free_ports(2)
    state = yield init(
        testcase,
        *("--port", str(public), "--tunnel-port", str(tunnel)),
        *("--listen", f"tcp:{public}:interface=127.0.0.1"),
        *("--internal-url", f"http://127.0.0.1:{backend.getHost().port}/int/"),  # type: ignore[attr-defined]
    )
    config = state / "service.toml"
    replace_once(config, 'pre_authentication = "oidc"', 'pre_authentication = "passthrough"')
    replace_once(config, f':{public}/"\n', f':{public}/ext/"\n')
    d = _Deployment(testcase, state, public)
    d.service = twistd(testcase, "appproxy", config, state.parent)
    yield d.service.wait_for("appproxy service ready")
    d.connector = twistd(
        testcase, "appproxy-connector", state / "connector" / "connector.toml", state.parent
    )
    deadline = reactor.seconds() + READY_TIMEOUT
    while True:
        response = yield d.curl("/ext/cookies")
        if response.status == 200:
            break
        if reactor.seconds() > deadline:
            raise AssertionError(f"no answer through the tunnel\n{d.describe()}")
        yield deferLater(reactor, 0.2, lambda: None)
    return d, hashlib.sha256(file.read_bytes()).hexdigest()


class ContentLengthTests(TestCase):
    timeout = 120

    def assertLength(self, response: _Response, length: int) -> None:
        self.assertEqual(response.status, 200, response.status_line)
        self.assertEqual(response.header("content-length"), str(length), response.headers)
        self.assertIsNone(response.header("transfer-encoding"), response.headers)

    @inlineCallbacks
    def test_length_kept(self) -> Any:
        """
        A file of known size reaches HTTP/1.1 and HTTP/2 clients with its
        Content-Length, whole; HEAD has the length and no body; a 304 and a
        204 that carry a length (the 304's: the 200's) end, empty, and leave
        the tunnel working; heads whose lines end in bare LFs reach clients
        as their CRLF twins do.
        """
        d, digest = yield deploy(self)
        for http in ("--http1.1", "--http2"):
            response = yield d.curl("/ext/file.bin", http=http)
            self.assertLength(response, FILE_SIZE)
            self.assertEqual(hashlib.sha256(response.body).hexdigest(), digest)
            if http == "--http2":
                self.assertTrue(response.status_line.startswith("HTTP/2 "), response.status_line)
            head = yield d.curl("/ext/file.bin", "-I", http=http)
            self.assertLength(head, FILE_SIZE)
            modified = response.header("last-modified")
            assert modified is not None
            cached = yield d.curl(
                "/ext/file.bin", "-H", f"If-Modified-Since: {modified}", http=http
            )
            self.assertEqual(cached.status, 304, cached.status_line)
            self.assertEqual(cached.body, b"")
            for method in ([], ["-I"]):
                for name, status in [("not-modified", 304), ("no-content", 204)]:
                    answer = yield d.curl(f"/ext/raw/{name}", *method, http=http)
                    self.assertEqual(answer.status, status, (name, method, answer.headers))
                    self.assertEqual(answer.body, b"")
                    self.assertIsNone(answer.header("content-length"), answer.headers)
                    self.assertIsNone(answer.header("transfer-encoding"))
                list_form = yield d.curl("/ext/raw/list", *method, http=http)
                self.assertLength(list_form, 5)
                for name in ("lf", "lf-chunked"):
                    lf = yield d.curl(f"/ext/raw/{name}", *method, http=http)
                    crlf = yield d.curl(f"/ext/raw/{name}-crlf", *method, http=http)
                    lf.headers.pop("date", None)
                    crlf.headers.pop("date", None)
                    self.assertEqual(lf.status, 200, (name, method, lf.status_line))
                    self.assertEqual(lf.header("x-a"), "1 folded" if name == "lf" else "1")
                    self.assertEqual(lf.body, b"" if method else b"hello")
                    got = (lf.status_line, lf.headers, lf.body)
                    self.assertEqual(got, (crlf.status_line, crlf.headers, crlf.body))
        again = yield d.curl("/ext/file.bin", http="--http2")
        self.assertLength(again, FILE_SIZE)
        self.assertNotIn("disconnected", d.service.output(), d.describe())
        for process in (d.service, d.connector):
            self.assertNotIn("Traceback", process.output(), d.describe())

    @inlineCallbacks
    def test_bad_length_is_502(self) -> Any:
        """
        A conflicting, malformed or negative Content-Length from the backend
        (for GET, and for HEAD, whose length the connector's HTTP client
        leaves alone) gets a 502 for that request; the tunnel carries the
        next one.
        """
        d, digest = yield deploy(self)
        for name in ("conflicting", "malformed", "negative"):
            for method in ([], ["-I"]):
                for http in ("--http1.1", "--http2"):
                    response = yield d.curl(f"/ext/raw/{name}", *method, http=http)
                    self.assertEqual(response.status, 502, (name, method, http, d.describe()))
        response = yield d.curl("/ext/file.bin", http="--http2")
        self.assertLength(response, FILE_SIZE)
        self.assertEqual(hashlib.sha256(response.body).hexdigest(), digest)
        self.assertNotIn("disconnected", d.service.output(), d.describe())
        for process in (d.service, d.connector):
            self.assertNotIn("Traceback", process.output(), d.describe())
            self.assertNotIn("Unhandled", process.output(), d.describe())
        self.assertIn("sent Content-Length", d.connector.output())
        self.assertIn("sent a malformed response", d.connector.output())


class CookiesAndRobotsTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_cookie_paths(self) -> Any:
        """
        Set-Cookie paths move from C{/int/} to C{/ext/} with their trailing
        slash; a cookie for another domain is untouched.
        """
        d, _ = yield deploy(self)
        response = yield d.curl("/ext/cookies")
        self.assertEqual(
            response.headers["set-cookie"],
            [
                "app=1; Path=/ext/; HttpOnly",
                "sub=1; Path=/ext/sub/",
                "sso=1; Domain=login.corp.example; Path=/int/",
            ],
        )

    @inlineCallbacks
    def test_robots(self) -> Any:
        """
        C{/robots.txt} on the app's host is the service's answer, though the
        only app there is published at C{/ext/}.
        """
        d, _ = yield deploy(self)
        for http in ("--http1.1", "--http2"):
            robots = yield d.curl("/robots.txt", http=http)
            self.assertEqual(robots.status, 200, robots.status_line)
            self.assertEqual(robots.body, b"User-agent: *\nDisallow: /\n")
