"""
The deployment of the connector trust end-to-end tests: the service and its
connectors as C{twistd} daemons (the installed code, as L{tests.test_daemons}
runs them), each connector registered through the service's enrolment API
with C{appproxy-connector register}, in front of L{tests.deployment}'s
backend (in this process), with the state database the daemons share with
the C{appproxy connectors} and C{appproxy logs audit} commands.

Sign-in for registration: C{builtin} (the service's own provider, issuer
C{https://localhost:PORT} on the public listener, so that the connector can
reach it by name), an independent C{oidc-provider} (L{tests.nodeprovider}),
or none (enrolment tokens only).

One app, C{web} (passthrough: requests need no sign-in), for the group
C{default}; C{[tunnel] connector_ca_key} is set, so the service signs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import sqlite3
import ssl
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred, inlineCallbacks

from appproxy.daemon import pki
from appproxy.state.enrolment_tokens import create_token
from appproxy.state.schema import DATABASE_NAME, configure_connection
from tests.deployment import DOMAIN, Deployment
from tests.nodeprovider import NodeProvider
from tests.test_daemons import BIN, PYTHON, Process, free_ports, replace_once, spawn, twistd
from tests.websocket_clients import in_thread, wait_until

__all__ = [
    "ADMIN_ROLE",
    "DEVICE_CLIENT_ID",
    "PASSWORD",
    "TUNNEL_HOST",
    "USER_CODE",
    "Connector",
    "Files",
    "TrustDeployment",
    "start",
]

TUNNEL_HOST = f"tunnel.{DOMAIN}"
ADMIN_ROLE = "Application Administrator"
DEVICE_CLIENT_ID = "appproxy-connector"
PASSWORD = "correct horse battery staple"
CLIENT_SECRET = "a-client-secret-of-some-length-0123456789"
#: A device flow's user code as both providers show it (RFC 8628's alphabet).
USER_CODE = re.compile(r"\b[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}\b")
#: Bound on a command, a registration or a daemon's start.
WAIT = 30.0
#: What a connector (the tunnel's HTTP/2 server) sends first: an empty SETTINGS
#: frame (the client's "PRI * HTTP/2.0" preface is the service's to send).
_HTTP2_PREFACE = bytes.fromhex("000000040000000000")


#: A certificate file and its key file.
Files = tuple[Path, Path]


@attrs.define
class Connector:
    """A registered connector: its directory and, once started, its daemon."""

    name: str
    directory: Path
    process: Process | None = None

    @property
    def cert_pem(self) -> bytes:
        return (self.directory / "connector.pem").read_bytes()

    @property
    def key_pem(self) -> bytes:
        return (self.directory / "connector.key").read_bytes()

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def files(self, keep: str | None = None) -> Files:
        """
        Its certificate and key files now; with C{keep}, copies of them
        (C{KEEP.pem}, C{KEEP.key}) that outlive a renewal.
        """
        cert, key = self.directory / "connector.pem", self.directory / "connector.key"
        if keep is None:
            return cert, key
        kept = self.directory / f"{keep}.pem", self.directory / f"{keep}.key"
        kept[0].write_bytes(cert.read_bytes())
        kept[1].touch(mode=0o600)
        kept[1].write_bytes(key.read_bytes())
        return kept

    @property
    def id(self) -> str:
        (cn,) = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(cn.value)


class TrustDeployment(Deployment):
    """Made by L{start}; the daemons are stopped by the test's cleanups."""

    provider: str | NodeProvider
    service_process: Process
    named: dict[str, Connector]

    def _write_pki(self) -> None:
        self._write("ca.pem", self.ca.cert_pem)
        self._write("ca.key", self.ca.key_pem).chmod(0o600)
        # localhost: the built-in provider's issuer, reachable by name.
        web = pki.issue_server_certificate(self.ca, [f"*.{DOMAIN}", DOMAIN, "localhost"])
        self._write("web.pem", web.cert_pem)
        self._write("web.key", web.key_pem)
        tunnel = pki.issue_server_certificate(self.ca, [TUNNEL_HOST])
        self._write("tunnel.pem", tunnel.cert_pem)
        self._write("tunnel.key", tunnel.key_pem)

    @property
    def config_path(self) -> Path:
        return self.root / "service.toml"

    @property
    def fingerprint(self) -> str:
        """The CA's fingerprint, computed here (not by the code under test)."""
        der = x509.load_pem_x509_certificate(self.ca.cert_pem).public_bytes(
            serialization.Encoding.DER
        )
        return "sha256:" + hashlib.sha256(der).hexdigest()

    # -- commands -----------------------------------------------------------

    @inlineCallbacks
    def run(self, name: str, argv: list[str], status: int | None = 0) -> Any:
        """Run a command to its end (bounded); the L{Process}; check its exit status."""
        process = spawn(self.testcase, name, argv, self.root)
        ended = yield process.ended(WAIT)
        if status is not None:
            assert ended == (status, None), process.describe()
        return process

    def appproxy(self, *argv: str, status: int | None = 0) -> Deferred[Process]:
        """C{appproxy ARGV --config service.toml}."""
        args = [PYTHON, "-m", "appproxy", *argv, "--config", str(self.config_path)]
        return self.run("appproxy " + " ".join(argv), args, status)

    @inlineCallbacks
    def token(self, group: str = "default", *options: str) -> Any:
        """A new enrolment token from C{appproxy connectors token create}."""
        process = yield self.appproxy("connectors", "token", "create", "--group", group, *options)
        tokens = re.findall(r"appproxy-enrol\.[0-9a-f]+\.[A-Za-z0-9_-]+", process.stdout())
        assert len(tokens) == 1, process.describe()
        return tokens[0]

    def expired_token(self, group: str = "default") -> str:
        """
        A token that expired an hour ago: made in the state database with the
        clock an hour and a minute back (the service's clock cannot wait).
        """
        with closing(sqlite3.connect(self.state_dir / DATABASE_NAME, timeout=10)) as conn:
            configure_connection(conn)
            past = time.time() - 3660
            return create_token(conn, group=group, ttl=60, uses=1, actor="tests", now=past)

    @inlineCallbacks
    def list_json(self) -> Any:
        """C{appproxy connectors list --json} (JSON lines): connector id -> its record."""
        process = yield self.appproxy("connectors", "list", "--json")
        items = [json.loads(line) for line in process.stdout().splitlines() if line.strip()]
        return {item["id"]: item for item in items}

    @inlineCallbacks
    def audit(self, *events: str) -> Any:
        """C{appproxy logs audit --json}: the events (all, or those named)."""
        process = yield self.appproxy("logs", "audit", "--json")
        entries = [json.loads(line) for line in process.stdout().splitlines() if line.strip()]
        return [e for e in entries if not events or e["event"] in events]

    # -- connectors -----------------------------------------------------------

    def register(
        self, name: str, *options: str, token: str | None = None, group: str | None = None
    ) -> Process:
        """
        Start C{appproxy-connector register} into C{ROOT/NAME} (not waited
        for): with C{token} (written to a file) or else the device flow.
        """
        directory = self.root / name
        argv = [
            str(BIN / "appproxy-connector"),
            "register",
            *("--service", f"https://{TUNNEL_HOST}:{self.tunnel_port}"),
            *("--address", "127.0.0.1", "--state-dir", str(directory)),
            *("--ca-fingerprint", self.fingerprint, "--name", f"{name}.internal"),
            *options,
        ]
        if group is not None:
            argv += ["--group", group]
        if token is not None:
            token_file = self.root / f"{name}.token"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            argv += ["--token-file", str(token_file)]
        elif isinstance(self.provider, NodeProvider):
            argv += ["--idp-ca", str(self.root / "idp-ca.pem")]
        elif self.provider == "builtin":  # its certificate is from the deployment's CA
            argv += ["--idp-ca", str(self.root / "ca.pem")]
        self.named[name] = Connector(name, directory)
        return spawn(self.testcase, f"register {name}", argv, self.root)

    @inlineCallbacks
    def register_with_token(
        self, name: str, group: str = "default", token: str | None = None
    ) -> Any:
        """A connector registered with C{token} (default: a new one-time one)."""
        if token is None:
            token = yield self.token(group)
        process = self.register(name, token=token)
        status = yield process.ended(WAIT)
        assert status == (0, None), f"{process.describe()}\n{self.tails()}"
        return self.named[name]

    @inlineCallbacks
    def start_connector_daemon(self, connector: Connector, connections: int = 2) -> Any:
        """C{twistd appproxy-connector}; wait until its tunnels are up."""
        config = connector.directory / "connector.toml"
        text = config.read_text()
        if "\nconnections =" not in text:
            replace_once(config, "[connector]\n", f"[connector]\nconnections = {connections}\n")
        connector.process = twistd(self.testcase, "appproxy-connector", config, self.root)
        yield self.wait_connections(connector, connections)
        return connector

    def connections(self, connector: Connector) -> int:
        """Tunnel connections of C{connector} open now, from the service's log."""
        output = self.service_process.output()
        prefix = rf"Connector {re.escape(connector.id)} of group \S+"
        opened = len(re.findall(rf"{prefix} connected from", output))
        return opened - len(re.findall(rf"{prefix} disconnected", output))

    def wait_connections(
        self, connector: Connector, count: int, timeout: float = WAIT
    ) -> Deferred[Any]:
        def enough() -> bool:
            if connector.process is not None and not connector.process.running:
                raise AssertionError(f"the connector exited:\n{connector.process.describe()}")
            return self.connections(connector) == count

        return wait_until(enough, f"{count} tunnel connections of {connector.name}", timeout)

    def tails(self, lines: int = 40) -> str:
        """The last lines of the service's log (and of the connectors' daemons)."""
        processes = [self.service_process, *(c.process for c in self.named.values())]
        return "\n".join(
            f"--- {p.name} (last {lines} lines) ---\n" + "\n".join(p.output().splitlines()[-lines:])
            for p in processes
            if p is not None
        )

    # -- the enrolment API and the tunnel, spoken directly -------------------

    def _tls(self, alpn: str, cert: Files | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        context.set_alpn_protocols([alpn])
        if cert is not None:
            context.load_cert_chain(*cert)
        return context

    def api(
        self, method: str, path: str, body: bytes | None = None, cert: Files | None = None
    ) -> Deferred[tuple[int, Any]]:
        """One enrolment API call (in a thread): status and JSON answer."""

        def call() -> tuple[int, Any]:
            context = self._tls("http/1.1", cert)
            sock = socket.create_connection(("127.0.0.1", self.tunnel_port), timeout=10)
            connection = http.client.HTTPConnection(TUNNEL_HOST, self.tunnel_port, timeout=10)
            connection.sock = context.wrap_socket(sock, server_hostname=TUNNEL_HOST)
            try:
                headers = {"content-type": "application/json"} if body is not None else {}
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, json.loads(response.read() or b"null")
            finally:
                connection.close()

        return in_thread(call)

    def tunnel_closed(self, cert: Files, timeout: float = 5.0) -> Deferred[bool]:
        """
        Open a tunnel connection (ALPN h2) with C{cert}'s certificate and key
        (in a thread): whether the service closed it within C{timeout}.
        """

        def attempt() -> bool:
            context = self._tls("h2", cert)
            sock = socket.create_connection(("127.0.0.1", self.tunnel_port), timeout=timeout)
            try:
                tls = context.wrap_socket(sock, server_hostname=TUNNEL_HOST)
                tls.sendall(_HTTP2_PREFACE)
                while tls.recv(65536):
                    pass
            except TimeoutError:
                return False
            except OSError:  # an alert, a reset: closed as well
                return True
            finally:
                sock.close()
            return True

        return in_thread(attempt)


def _provider_toml(provider: str | NodeProvider, public: int) -> str:
    if isinstance(provider, NodeProvider):
        return f"""
[oidc]
issuer = "{provider.issuer}"
client_id = "appproxy"
client_secret_file = "client-secret"
callback_url = "https://login.{DOMAIN}/.appproxy/callback"
provider_ca = "idp-ca.pem"

[connectors]
device_client_id = "{DEVICE_CLIENT_ID}"
"""
    if provider == "builtin":
        return f"""
[oidc]
issuer = "https://localhost:{public}"
client_id = "appproxy"
client_secret_file = "client-secret"
callback_url = "https://localhost:{public}/.appproxy/callback"
provider_ca = "ca.pem"
provider_address = "127.0.0.1:{public}"

[builtin_provider]
issuer = "https://localhost:{public}"

[connectors]
"""
    return "\n[connectors]\n"


@inlineCallbacks
def start(
    testcase: Any,
    *,
    provider: str | NodeProvider = "none",
    connectors: str = "",
    users: dict[str, list[str]] | None = None,
) -> Any:
    """
    The backend, the service daemon (ready), nothing registered yet.

    @param provider: C{"builtin"}, a running L{NodeProvider} or C{"none"}.
    @param connectors: more C{key = value} lines for C{[connectors]}.
    @param users: the built-in provider's users: name -> roles (password
        L{PASSWORD}).
    """
    public, tunnel = free_ports(2)
    apps = [{"name": "web", "external_url": f"https://web.{DOMAIN}/"}]
    toml = _provider_toml(provider, public) + connectors + "\n"
    d = TrustDeployment(testcase, apps, 5.0, extra_toml=toml)
    d.provider, d.named = provider, {}
    d.root = d.root.absolute()  # the daemons and commands run in it
    d._write("client-secret", CLIENT_SECRET.encode() + b"\n")
    if isinstance(provider, NodeProvider):
        d._write("idp-ca.pem", provider.ca_pem)
    d.state_dir.mkdir(mode=0o700)
    if provider == "builtin":
        from appproxy.idp.users import add_user

        for name, roles in (users or {}).items():
            add_user(d.state_dir / "users.json", name, PASSWORD, roles=roles)
    config = d.write_service_config(public, tunnel)
    replace_once(
        config,
        'connector_ca = "ca.pem"\n',
        'connector_ca = "ca.pem"\nconnector_ca_key = "ca.key"\n',
    )
    d.public_port, d.tunnel_port = public, tunnel
    d.service_process = twistd(testcase, "appproxy", config, d.root)
    yield d.service_process.wait_for("appproxy service ready", WAIT)
    return d
