"""
The deployment of the end-to-end WebSocket tests: C{appproxy init}, then the
service and a connector as C{twistd} subprocesses (the installed code, as
L{tests.test_daemons} runs them), in front of L{tests.websocket_app} (the
C{websockets} library's server) run as a subprocess on loopback.

Apps (all on the one internal app, all signing in with the built-in
provider):

  - C{web}: WebSockets on, one extra allowed origin (L{ALLOWED_ORIGIN});
    like every app here, a short C{backend_timeout} (L{BACKEND_TIMEOUT}).
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
import urllib.request
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from appproxy.daemon import pki
from appproxy.idp.users import add_user
from tests.browser import Browser
from tests.browser_deployment import users_file
from tests.test_daemons import (
    PYTHON,
    Process,
    free_ports,
    line_with,
    replace_once,
    spawn,
    twistd,
)
from tests.websocket_clients import (
    WAIT,
    closed_within,
    echoes,
    headers_of,
    in_thread,
    rss_kib,
    wait_until,
)

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

DOMAIN = "appproxy.localhost"
APP_SCRIPT = Path(__file__).resolve().parent / "websocket_app.py"
#: The apps' backend_timeout, and a client_header_timeout for the service
#: (L{start}'s C{service}): short, so that an idle WebSocket outlives them by
#: far within a test, long enough for a TLS handshake on a busy machine.
BACKEND_TIMEOUT = 4
HEADER_TIMEOUT = 4
#: The C{idle} app's websocket_idle_timeout.
IDLE_TIMEOUT = 2.0
#: An origin besides its own whose pages may open C{web}'s WebSockets.
ALLOWED_ORIGIN = "https://dashboard.example.org"
PASSWORD = "correct horse"
USERS = ("alice", "bob", "carol")


def _edit(config: Path, public: int, queue_timeout: float, tls_port: int | None) -> None:
    """The apps and timeouts of the module docstring, into C{appproxy init}'s file."""
    replace_once(config, "queue_timeout = 10\n", f"queue_timeout = {queue_timeout}\n")
    internal = line_with(config, "internal_url =").split("=", 1)[1].strip()
    app_settings = f"backend_timeout = {BACKEND_TIMEOUT}\n"
    web = f'websocket_origins = ["{ALLOWED_ORIGIN}"]\n' + app_settings
    replace_once(config, 'pre_authentication = "oidc"\n', f'pre_authentication = "oidc"\n{web}')
    text = config.read_text()
    extra = []
    apps = [
        ("idle", internal, f"websocket_idle_timeout = {IDLE_TIMEOUT}\n"),
        ("nows", internal, "websocket = false\n"),
        ("capped", internal, "max_websockets = 1\n"),
    ]
    if tls_port is not None:
        https = f'"https://localhost:{tls_port}/"'
        apps += [("secure", https, 'backend_ca = "internal-ca.pem"\n'), ("untrusted", https, "")]
    for name, url, settings in apps:
        extra.append(
            f"""
[[apps]]
name = "{name}"
external_url = "https://{name}.{DOMAIN}:{public}/"
internal_url = {url}
connector_group = "default"
{settings}{app_settings}
[apps.headers]
X-Remote-User = "preferred_username"
"""
        )
    head, sep, tail = text.partition("\n[oidc]\n")
    config.write_text(head + "".join(extra) + sep + tail)


def _set(config: Path, table: str, settings: str) -> None:
    """
    Set C{key = value} lines in C{table}, the file's first table: replace
    the line of a key already set, add the others after the table's header.
    """
    for setting in filter(None, settings.splitlines()):
        key = setting.split("=", 1)[0].strip()
        lines = [line for line in config.read_text().splitlines() if line.startswith(f"{key} =")]
        if lines:
            replace_once(config, f"\n{lines[0]}\n", f"\n{setting}\n")
        else:
            replace_once(config, f"\n{table}\n", f"\n{table}\n{setting}\n")


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
    #: The C{wss://} app's port and CA (L{start}'s C{tls_app}).
    tls_port: int | None = None
    internal_ca: Path | None = None
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
    def sign_in(self, user: str, app: str = "web", status: int = 200) -> Any:
        """
        Sign C{user} in to C{app} with a new browser; the C{Cookie} header
        value a WebSocket client sends (the app's session cookie and one of
        the app's own).

        @param status: what the app's C{/} answers once signed in.
        """
        browser = Browser([self.ca_pem])
        self.testcase.addCleanup(browser.pool.closeCachedConnections)
        page = yield browser.go(self.url("/", app))
        if page.status == 200 and "password" in page.text:
            page = yield browser.submit(page, {"username": user, "password": PASSWORD})
        deadline = reactor.seconds() + WAIT
        while page.status != status and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.2, lambda: None)  # the connector is still dialling
            page = yield browser.go(self.url("/", app))
        assert page.status == status, (
            f"{user} could not sign in to {app}: {page.status} {page.text}"
        )
        assert status != 200 or json.loads(page.body)["path"] == "/", page.text
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
        # The sync client reads its socket in a thread of its own while the
        # caller's thread writes the handshake: with TLS 1.3, OpenSSL (which
        # allows no such concurrent use) may then hold the write until the
        # socket is readable again, i.e. until the service's 408 (seen in
        # about 1 handshake of 500 on a loaded machine).  TLS 1.2 has no
        # message after the handshake for the reader to race with.
        context = self.ssl_context()
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        kwargs.setdefault("ping_interval", None)
        kwargs.setdefault("max_size", None)
        try:
            return connect(
                self.ws_url(path, app),
                sock=sock,
                ssl=context,
                origin=(self.origin(app) if origin == "" else origin),  # type: ignore[arg-type]
                additional_headers=headers,
                proxy=None,
                open_timeout=WAIT,
                close_timeout=5,
                **kwargs,
            )
        except TimeoutError as e:
            raise AssertionError(f"{path}: {e}\n{self.tails()}") from e

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

    def seen_now(self, tls: bool = False) -> list[dict[str, Any]]:
        """
        What reached the app (C{tls}: the C{wss://} one) so far, asked of it
        directly (blocking).
        """
        if tls:
            assert self.internal_ca is not None
            url = f"https://localhost:{self.tls_port}/seen"
            context = ssl.create_default_context(cafile=str(self.internal_ca))
        else:
            url, context = f"http://127.0.0.1:{self.app_port}/seen", None
        with urllib.request.urlopen(url, timeout=WAIT, context=context) as response:
            requests: list[dict[str, Any]] = json.load(response)["requests"]
            return requests

    def seen(self, tls: bool = False) -> Deferred[list[dict[str, Any]]]:
        return in_thread(self.seen_now, tls)

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

    def logged(self, *words: str, count: int = 1) -> Deferred[str]:
        """
        Wait until C{count} lines of the service's log hold all C{words};
        the last of them.
        """

        def line() -> str | None:
            lines = [
                text
                for text in self.service.output().splitlines()
                if all(word in text for word in words)
            ]
            return lines[-1] if len(lines) >= count else None

        return wait_until(line, f"{count} service log lines with {words}", 10.0)

    def pids(self) -> dict[str, int]:
        return {
            "service": self.service.transport.pid,  # type: ignore[union-attr]
            "connector": self.connector.transport.pid,  # type: ignore[union-attr]
        }

    def describe(self) -> str:
        return f"{self.service.describe()}\n{self.connector.describe()}"

    def tails(self, lines: int = 30) -> str:
        """The last lines of the service's and the connector's logs."""
        return "\n".join(
            f"--- {process.name} (last {lines} lines) ---\n"
            + "\n".join(process.output().splitlines()[-lines:])
            for process in (self.service, self.connector)
        )


@inlineCallbacks
def start_app(testcase: Any, cwd: Path, *tls: str) -> Any:
    """
    L{tests.websocket_app} as a subprocess; the process and its port.

    @param tls: C{--tls-cert PEM --tls-key PEM} for C{wss://}.
    """
    argv = [PYTHON, str(APP_SCRIPT), "--max-seconds", "300", *tls]
    app = spawn(testcase, "websocket app" + (" (TLS)" if tls else ""), argv, cwd)
    yield app.wait_for("ready ", 30.0)
    port = int(app.stdout().split("ready ", 1)[1].split()[0])
    return app, port


@inlineCallbacks
def start(
    testcase: Any,
    connections: int = 2,
    service: str = "",
    connector: str = "",
    queue_timeout: float = 10,
    tls_app: bool = False,
    metrics: int | None = None,
) -> Any:
    """
    The internal app, C{appproxy init}, the users L{USERS}, the service and
    a connector with C{connections} tunnel connections, all up.

    @param service: C{key = value} lines for C{[service]}.
    @param connector: C{key = value} lines for C{[connector]}.
    @param queue_timeout: the service's C{queue_timeout}.
    @param tls_app: also a second internal app serving C{wss://} (a
        certificate for C{localhost} from a CA of its own), published as
        C{secure} (C{backend_ca} is that CA) and C{untrusted} (no
        C{backend_ca}: the system's trust store does not know it).
    @param metrics: the port of the service's metrics listener on
        127.0.0.1 (L{None}: none).
    """
    parent = Path(testcase.mktemp()).absolute()
    parent.mkdir(parents=True)
    app, app_port = yield start_app(testcase, parent)
    tls_port = None
    if tls_app:
        internal_ca = pki.generate_ca("internal CA")
        pair = pki.issue_server_certificate(internal_ca, ["localhost"])
        for name, pem in (("ca", internal_ca.cert_pem), ("app", pair.cert_pem)):
            (parent / f"{name}.pem").write_bytes(pem)
        (parent / "app.key").write_bytes(pair.key_pem)
        _, tls_port = yield start_app(
            testcase,
            parent,
            "--tls-cert",
            str(parent / "app.pem"),
            "--tls-key",
            str(parent / "app.key"),
        )
    public, tunnel = free_ports(2)
    config_dir = parent / "appproxy"
    argv = [
        *(PYTHON, "-m", "appproxy", "init", "--state-dir", str(config_dir)),
        *("--domain", DOMAIN, "--app-name", "web"),
        *("--port", str(public), "--tunnel-port", str(tunnel)),
        f"--metrics-listen={'none' if metrics is None else f'tcp:{metrics}:interface=127.0.0.1'}",
        *("--internal-url", f"http://127.0.0.1:{app_port}/"),
    ]
    init = spawn(testcase, "appproxy init", argv, parent)
    status = yield init.ended(30.0)
    assert status == (0, None), init.describe()
    config = config_dir / "service.toml"
    _edit(config, public, queue_timeout, tls_port)
    if tls_app:
        (config_dir / "internal-ca.pem").write_bytes((parent / "ca.pem").read_bytes())
    _set(config, "[service]", service)
    connector_toml = config_dir / "connector" / "connector.toml"
    _set(connector_toml, "[connector]", f"connections = {connections}\n{connector}")
    path = users_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in USERS:
        add_user(path, name, PASSWORD)
    service_process = twistd(testcase, "appproxy", config, parent)
    yield service_process.wait_for("appproxy service ready", 30.0)
    connector_process = twistd(testcase, "appproxy-connector", connector_toml, parent)
    yield wait_until(
        lambda: (
            service_process.output().count("connected from") >= connections
            or not (service_process.running and connector_process.running)
        ),
        "the connector's tunnel connections",
        30.0,
    )
    assert service_process.running and connector_process.running, (
        f"{service_process.describe()}\n{connector_process.describe()}"
    )
    return WebSocketDaemons(
        testcase=testcase,
        config_dir=config_dir,
        public=public,
        app_port=app_port,
        app=app,
        service=service_process,
        connector=connector_process,
        ca_pem=(config_dir / "ca.pem").read_bytes(),
        tls_port=tls_port,
        internal_ca=(parent / "ca.pem") if tls_app else None,
    )
