"""
The deployment of the end-to-end WebSocket tests: C{appproxy init}, then the
service and a connector as C{twistd} subprocesses (the installed code, as
L{tests.test_daemons} runs them), in front of L{tests.websocket_app} (the
C{websockets} library's server) run as a subprocess on loopback.

Apps (all on the one internal app, all signing in with the built-in
provider):

  - C{web}: WebSockets on, one extra allowed origin (L{ALLOWED_ORIGIN}),
    short request timeouts (L{BACKEND_TIMEOUT}; the service's
    C{client_header_timeout} is L{HEADER_TIMEOUT}).
  - C{idle}: C{websocket_idle_timeout = IDLE_TIMEOUT}.
  - C{nows}: C{websocket = false}.
  - C{capped}: C{max_websockets = 1}.

Clients: the C{websockets} library's sync client, always run in a thread
(L{in_thread}), never on the reactor's thread; L{Browser} (the stand-in) to
sign in and out.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from appproxy.idp.users import add_user
from tests.browser import Browser
from tests.browser_deployment import users_file
from tests.test_daemons import PYTHON, Process, free_ports, spawn, twistd

__all__ = [
    "ALLOWED_ORIGIN",
    "BACKEND_TIMEOUT",
    "DOMAIN",
    "HEADER_TIMEOUT",
    "IDLE_TIMEOUT",
    "PASSWORD",
    "WebSocketDaemons",
    "closed_within",
    "echoes",
    "headers_of",
    "in_thread",
    "rss_kib",
    "start",
    "wait_until",
]

T = TypeVar("T")

DOMAIN = "appproxy.localhost"
APP_SCRIPT = Path(__file__).resolve().parent / "websocket_app.py"
#: The C{web} app's backend_timeout and the service's client_header_timeout:
#: short, so that an idle WebSocket outlives them by far within a test.
BACKEND_TIMEOUT = 2
HEADER_TIMEOUT = 2
#: The C{idle} app's websocket_idle_timeout.
IDLE_TIMEOUT = 2.0
#: An origin besides its own whose pages may open C{web}'s WebSockets.
ALLOWED_ORIGIN = "https://dashboard.example.org"
PASSWORD = "correct horse"
USERS = ("alice", "bob", "carol")
#: Bound on any wait for a condition.
WAIT = 15.0


def in_thread(f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
    """Run a blocking client call in the reactor's thread pool."""
    threads = cast(IReactorThreads, reactor)
    return deferToThreadPool(threads, threads.getThreadPool(), f, *args, **kwargs)


@inlineCallbacks
def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """
    Poll C{condition} (a callable returning a value or a Deferred of one)
    every 50 ms until it is true; its value.  Fails after C{timeout} s.
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = yield condition()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {value!r})")
        yield deferLater(reactor, 0.05, lambda: None)


def rss_kib(pid: int) -> int:
    """C{VmRSS} of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _edit(config: Path, public: int) -> None:
    text = config.read_text()
    text = text.replace(
        "queue_timeout = 10\n",
        f"queue_timeout = 10\nclient_header_timeout = {HEADER_TIMEOUT}\n",
        1,
    )
    internal = (
        next(line for line in text.splitlines() if line.startswith("internal_url ="))
        .split("=", 1)[1]
        .strip()
    )
    app_settings = f"backend_timeout = {BACKEND_TIMEOUT}\n"
    web = f'websocket_origins = ["{ALLOWED_ORIGIN}"]\n' + app_settings
    text = text.replace('pre_authentication = "oidc"\n', f'pre_authentication = "oidc"\n{web}', 1)
    extra = []
    for name, settings in (
        ("idle", f"websocket_idle_timeout = {IDLE_TIMEOUT}\n"),
        ("nows", "websocket = false\n"),
        ("capped", "max_websockets = 1\n"),
    ):
        extra.append(
            f"""
[[apps]]
name = "{name}"
external_url = "https://{name}.{DOMAIN}:{public}/"
internal_url = {internal}
connector_group = "default"
{settings}{app_settings}
[apps.headers]
X-Remote-User = "preferred_username"
"""
        )
    head, sep, tail = text.partition("\n[oidc]\n")
    config.write_text(head + "".join(extra) + sep + tail)


@attrs.define
class WebSocketDaemons:
    """A running deployment: ports, processes, and clients for it."""

    testcase: Any
    config_dir: Path
    public: int
    app_port: int
    app: Process
    service: Process
    connector: Process
    ca_pem: bytes
    browsers: dict[str, Browser] = attrs.field(factory=dict)

    # -- addresses ------------------------------------------------------------

    def host(self, app: str = "web") -> str:
        return f"{app}.{DOMAIN}"

    def origin(self, app: str = "web") -> str:
        """The app's external origin, as a browser sends it in C{Origin}."""
        return f"https://{self.host(app)}:{self.public}"

    def url(self, path: str = "/", app: str = "web") -> str:
        return f"{self.origin(app)}{path}"

    def ws_url(self, path: str, app: str = "web") -> str:
        return f"wss://{self.host(app)}:{self.public}{path}"

    @property
    def state(self) -> Path:
        return self.config_dir / "state"

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        context.set_alpn_protocols(["http/1.1"])
        return context

    # -- sign-in ----------------------------------------------------------------

    @inlineCallbacks
    def sign_in(self, user: str, app: str = "web") -> Any:
        """
        Sign C{user} in to C{app} with a new browser; the C{Cookie} header
        value a WebSocket client sends (the app's session cookie and one of
        the app's own).
        """
        browser = Browser([self.ca_pem])
        self.testcase.addCleanup(browser.pool.closeCachedConnections)
        page = yield browser.go(self.url("/", app))
        if page.status == 200 and "password" in page.text:
            page = yield browser.submit(page, {"username": user, "password": PASSWORD})
        deadline = reactor.seconds() + WAIT
        while page.status != 200 and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.2, lambda: None)  # the connector is still dialling
            page = yield browser.go(self.url("/", app))
        assert page.status == 200, f"{user} could not sign in to {app}: {page.status} {page.text}"
        assert json.loads(page.body)["path"] == "/", page.text
        name = f"__Host-appproxy-{app}"
        cookie = f"theme=dark; {name}={browser.cookies(self.host(app))[name]}"
        self.browsers[cookie] = browser
        return cookie

    @inlineCallbacks
    def sign_out(self, cookie: str, app: str = "web") -> Any:
        """Sign out the browser that signed in with C{cookie}."""
        browser = self.browsers[cookie]
        page = yield browser.go(self.url("/.appproxy/sign-out", app))
        assert page.status == 200, page.text
        assert f"__Host-appproxy-{app}" not in browser.cookies(self.host(app))

    @inlineCallbacks
    def appproxy(self, *argv: str) -> Any:
        """Run C{appproxy ARGV --state-dir CONFIG_DIR} (another process); its stdout."""
        process = spawn(
            self.testcase,
            "appproxy " + " ".join(argv),
            [PYTHON, "-m", "appproxy", *argv, "--state-dir", str(self.config_dir)],
            self.config_dir.parent,
        )
        status = yield process.ended()
        assert status == (0, None), process.describe()
        return process.stdout()

    # -- clients (blocking: call them in a thread) ------------------------------

    def open(
        self,
        path: str,
        cookie: str | None,
        app: str = "web",
        origin: str | None = "",
        **kwargs: Any,
    ) -> ClientConnection:
        """
        A WebSocket to C{path} of C{app} (blocking).  C{origin}: C{""} for
        the app's own, L{None} for none.
        """
        headers = {"Cookie": cookie} if cookie else {}
        sock = socket.create_connection(("127.0.0.1", self.public), timeout=WAIT)
        kwargs.setdefault("ping_interval", None)
        kwargs.setdefault("max_size", None)
        return connect(
            self.ws_url(path, app),
            sock=sock,
            ssl=self.ssl_context(),
            origin=(self.origin(app) if origin == "" else origin),  # type: ignore[arg-type]
            additional_headers=headers,
            proxy=None,
            open_timeout=WAIT,
            close_timeout=5,
            **kwargs,
        )

    def handshake(
        self, path: str, cookie: str | None, app: str = "web", origin: str | None = ""
    ) -> tuple[int, bytes]:
        """
        Try a WebSocket handshake (blocking): C{(101, b"")} if it opened (it
        is closed again at once), else the refusal's status and body.
        """
        try:
            ws = self.open(path, cookie, app, origin)
        except InvalidStatus as e:
            return e.response.status_code, bytes(e.response.body or b"")
        ws.close()
        return 101, b""

    def request(
        self, method: str, path: str, headers: dict[str, str], app: str = "web"
    ) -> tuple[int, dict[str, str], bytes]:
        """
        One HTTP/1.1 request through the service, headers sent as given
        (blocking): status, response headers (lowercase names), body.
        """
        sock = socket.create_connection(("127.0.0.1", self.public), timeout=WAIT)
        connection = http.client.HTTPConnection("127.0.0.1", self.public, timeout=WAIT)
        connection.sock = self.ssl_context().wrap_socket(sock, server_hostname=self.host(app))
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            connection.putheader("Host", f"{self.host(app)}:{self.public}")
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            body = response.read() if response.status != 101 else b""
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                body,
            )
        finally:
            connection.close()

    def seen_now(self) -> list[dict[str, Any]]:
        """What reached the app so far, asked of the app directly (blocking)."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.app_port}/seen", timeout=WAIT
        ) as response:
            requests: list[dict[str, Any]] = json.load(response)["requests"]
            return requests

    def seen(self) -> Deferred[list[dict[str, Any]]]:
        return in_thread(self.seen_now)

    @inlineCallbacks
    def app_closed(self, path: str, timeout: float = WAIT) -> Any:
        """Wait until the app saw its WebSocket at C{path} end; its record."""

        @inlineCallbacks
        def closed() -> Any:
            seen = yield self.seen()
            ended = [r for r in seen if r["path"] == path and r["closed_at"] is not None]
            return ended[-1] if ended else None

        record = yield wait_until(closed, f"the app's end of {path} closed", timeout)
        return record

    def logged(self, *words: str) -> Deferred[str]:
        """Wait until a line of the service's log holds all C{words}; the line."""

        def line() -> str | None:
            for text in self.service.output().splitlines():
                if all(word in text for word in words):
                    return text
            return None

        return wait_until(line, f"a service log line with {words}", 10.0)

    def pids(self) -> dict[str, int]:
        return {
            "service": self.service.transport.pid,  # type: ignore[union-attr]
            "connector": self.connector.transport.pid,  # type: ignore[union-attr]
        }

    def describe(self) -> str:
        return f"{self.service.describe()}\n{self.connector.describe()}"


def closed_within(ws: ClientConnection, timeout: float) -> tuple[int | None, str | None, float]:
    """
    Read C{ws} (blocking) until it closes; the close code and reason the
    client received (L{None} if no close frame came) and how long it took.
    Fails if it is still open after C{timeout} s or a message arrives.
    """
    started = time.monotonic()
    try:
        message = ws.recv(timeout=timeout)
    except ConnectionClosed:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {timeout} s") from None
    else:
        raise AssertionError(f"a message instead of a close: {message[:100]!r}")
    elapsed = time.monotonic() - started
    received = ws.protocol.close_rcvd
    if received is None:
        return None, None, elapsed
    return received.code, received.reason, elapsed


def echoes(ws: ClientConnection, text: str = "still there?") -> bool:
    """Whether C{ws} still echoes a message (blocking)."""
    ws.send(text)
    return ws.recv(timeout=10) == text


def headers_of(record: dict[str, Any]) -> dict[str, list[str]]:
    """A request record's headers by lowercase name."""
    result: dict[str, list[str]] = {}
    for name, value in record["headers"]:
        result.setdefault(name, []).append(value)
    return result


@inlineCallbacks
def start_app(testcase: Any, cwd: Path) -> Any:
    """L{tests.websocket_app} as a subprocess; the process and its port."""
    app = spawn(testcase, "websocket app", [PYTHON, str(APP_SCRIPT), "--max-seconds", "300"], cwd)
    yield app.wait_for("ready ", 30.0)
    port = int(app.stdout().split("ready ", 1)[1].split()[0])
    return app, port


@inlineCallbacks
def start(testcase: Any, connections: int = 2) -> Any:
    """
    The internal app, C{appproxy init}, the users L{USERS}, the service and
    a connector with C{connections} tunnel connections, all up.
    """
    parent = Path(testcase.mktemp()).absolute()
    parent.mkdir(parents=True)
    app, app_port = yield start_app(testcase, parent)
    public, tunnel = free_ports(2)
    config_dir = parent / "appproxy"
    argv = [
        *(PYTHON, "-m", "appproxy", "init", "--state-dir", str(config_dir)),
        *("--domain", DOMAIN, "--app-name", "web"),
        *("--port", str(public), "--tunnel-port", str(tunnel)),
        *("--internal-url", f"http://127.0.0.1:{app_port}/"),
    ]
    init = spawn(testcase, "appproxy init", argv, parent)
    status = yield init.ended(30.0)
    assert status == (0, None), init.describe()
    config = config_dir / "service.toml"
    _edit(config, public)
    connector_toml = config_dir / "connector" / "connector.toml"
    connector_toml.write_text(
        connector_toml.read_text().replace("connections = 4\n", f"connections = {connections}\n")
    )
    path = users_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in USERS:
        add_user(path, name, PASSWORD)
    service = twistd(testcase, "appproxy", config, parent)
    yield service.wait_for("appproxy service ready", 30.0)
    connector = twistd(testcase, "appproxy-connector", connector_toml, parent)
    yield wait_until(
        lambda: (
            service.output().count("connected from") >= connections
            or not (service.running and connector.running)
        ),
        "the connector's tunnel connections",
        30.0,
    )
    assert service.running and connector.running, f"{service.describe()}\n{connector.describe()}"
    return WebSocketDaemons(
        testcase=testcase,
        config_dir=config_dir,
        public=public,
        app_port=app_port,
        app=app,
        service=service,
        connector=connector,
        ca_pem=(config_dir / "ca.pem").read_bytes(),
    )
