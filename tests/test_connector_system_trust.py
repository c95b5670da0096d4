"""
A service whose tunnel listener has a publicly trusted certificate:
C{appproxy-connector register --system-trust} and the connector daemon
(C{service_trust = "system"} in connector.toml) verify it with the system
trust store, not with the pinned connector CA, for every call and for the
tunnel; the service's host name is checked all the same.

Real TLS on loopback against the real service.  The "system trust store" is
OpenSSL's default verify paths (Twisted's C{platformTrust()}), which honour
C{SSL_CERT_FILE} and C{SSL_CERT_DIR}: the subprocesses get them in their
environment, and the in-process connector gets them in this process's
environment (OpenSSL reads them whenever a TLS context is made).  Test CAs
play the public root the service's certificate chains to, and another root
the service's does not.
"""

from __future__ import annotations

import io
import os
import re
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from appproxy.cli.main import main as appproxy_main
from appproxy.config import ConfigError, load_connector_config
from appproxy.connector.trust import expired_message
from appproxy.daemon import pki
from appproxy.daemon.connector_tap import ConnectorService, load_connector
from appproxy.daemon.tls import tunnel_client_options
from appproxy.daemon.tls_failures import SYSTEM_TRUST_HINT, describe_tunnel_failure
from tests.deployment import DOMAIN, Deployment

SCRIPT = str(Path(sys.executable).parent / "appproxy-connector")
#: The public root the service's tunnel certificate chains to...
PUBLIC = pki.generate_ca("test public root")
#: ...and one it does not.
OTHER = pki.generate_ca("another public root")
TUNNEL_HOST = f"tunnel.{DOMAIN}"
UNKNOWN_CA = "certificate verify failed: the service's certificate is not signed by a CA"


def trust_store(testcase: TestCase | SynchronousTestCase, root: pki.KeyPair) -> dict[str, str]:
    """A "system trust store" holding C{root} only: the environment naming it."""
    base = Path(testcase.mktemp())
    (base / "certs").mkdir(parents=True)
    bundle = base / "bundle.pem"
    bundle.write_bytes(root.cert_pem)
    return {"SSL_CERT_FILE": str(bundle), "SSL_CERT_DIR": str(base / "certs")}


def use_store(testcase: TestCase, store: dict[str, str]) -> None:
    """This process's system trust store is C{store} until the test ends."""
    for name, value in store.items():
        testcase.addCleanup(_restore, name, os.environ.get(name))
        os.environ[name] = value


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class _PublicDeployment(Deployment):
    """The service's tunnel listener has a certificate from L{PUBLIC}, not the connector CA."""

    def _write_pki(self) -> None:
        super()._write_pki()
        tunnel = pki.issue_server_certificate(PUBLIC, [TUNNEL_HOST])
        self._write("tunnel.pem", tunnel.cert_pem)
        self._write("tunnel.key", tunnel.key_pem)


@implementer(IHandshakeListener)
class _Handshake(Protocol):
    """Fires C{done} with the ALPN protocol once the handshake is done, or fails it."""

    def __init__(self, done: Deferred[Any]) -> None:
        self.done = done
        self.tls: Any = None

    def connectionMade(self) -> None:
        self.tls = self.transport.getHandle()  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        self.done.callback(self.transport.negotiatedProtocol)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.errback(reason or Failure(Exception("lost")))


class SystemTrustTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.d = _PublicDeployment(
            self,
            [{"name": "web", "external_url": f"https://web.{DOMAIN}/"}],
            5.0,
            connector_ca_key=True,
        )
        self.d.start_service()
        self.state_dir = Path(self.mktemp())

    def token(self) -> Path:
        """A one-time token, as the administrator makes it."""
        out = io.StringIO()
        config = str(self.d.root / "service.toml")
        with redirect_stdout(out):
            code = appproxy_main(
                ["connectors", "token", "create", "--group", "default", "--config", config]
            )
        self.assertEqual(code, 0)
        [token] = re.findall(r"appproxy-enrol\.\S+", out.getvalue())
        path = Path(self.mktemp())
        path.write_text(token + "\n")
        path.chmod(0o600)
        return path

    def register(self, store: dict[str, str], *trust: str) -> Deferred[tuple[bytes, bytes, int]]:
        args = [
            "register",
            "--service",
            f"https://{TUNNEL_HOST}:{self.d.tunnel_port}",
            "--address",
            "127.0.0.1",
            "--state-dir",
            str(self.state_dir),
            "--token-file",
            str(self.token()),
            *trust,
        ]
        env = {**os.environ, **store}
        return getProcessOutputAndValue(SCRIPT, args, env=env, reactor=reactor)

    async def test_register_pull_and_serve(self) -> None:
        """
        The service's certificate chains to the system store: registration,
        the configuration pull and the tunnel all verify it there (the pinned
        connector CA did not sign it), and requests flow.
        """
        public = trust_store(self, PUBLIC)
        out, err, code = await self.register(public, "--system-trust")
        self.assertEqual((code, err), (0, b""), out)
        text = (self.state_dir / "connector.toml").read_text()
        self.assertIn('service_trust = "system"', text)
        config = load_connector_config(self.state_dir / "connector.toml")
        self.assertEqual(config.service_trust, "system")
        self.assertIsNone(config.service_ca_pem)
        # The connector CA, as the service returned it, kept for reference.
        self.assertEqual(config.ca_pem, self.d.ca.cert_pem)

        use_store(self, public)
        assert self.d.service is not None
        await self.d.service.refresh_admission()
        connector = self.start(load_connector(self.state_dir / "connector.toml", reactor))
        # The tunnel's failures would send the operator to the system store too.
        self.assertEqual(connector.report.ca_hint, SYSTEM_TRUST_HINT)
        await self.d.wait_for_connections(4)
        response = await self.d.client().get(self.d.url("web", "/hello"))
        self.assertEqual(response.code, 200)
        await response.content()
        await connector.stopService()

        # The same connector, its system store without the service's root:
        # every pull refused, in the operator's words, and no tunnel dialled.
        use_store(self, trust_store(self, OTHER))
        connector = self.start(load_connector(self.state_dir / "connector.toml", reactor))
        for _ in range(400):
            if connector.trust.report.reported:
                break
            await deferLater(reactor, 0.025, lambda: None)
        [reason] = connector.trust.report.reported
        self.assertIn(UNKNOWN_CA, reason)
        self.assertIn("(unknown CA)", reason)
        self.assertIn(SYSTEM_TRUST_HINT, reason)
        self.assertEqual((connector.trust.pulls, connector.redials), (0, []))

    def start(self, connector: ConnectorService) -> ConnectorService:
        self.addCleanup(lambda: connector.stopService() if connector.running else None)
        connector.startService()
        return connector

    async def test_register_refused_without_the_root(self) -> None:
        """Not in the system store: nothing is sent, one line says why."""
        out, err, code = await self.register(trust_store(self, OTHER), "--system-trust")
        self.assertEqual(code, 1, out)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(b"GET /v1/ca at " + TUNNEL_HOST.encode(), err)
        self.assertIn(UNKNOWN_CA.encode(), err)
        self.assertIn(b"with --system-trust, the system trust store must hold its issuer", err)
        self.assertFalse(self.state_dir.exists())

    async def test_pinned_ca_refuses_a_public_certificate(self) -> None:
        """With --ca-fingerprint only the connector CA is trusted; the hint names --system-trust."""
        fingerprint = pki.ca_fingerprint(self.d.ca.cert_pem)
        _, err, code = await self.register(
            trust_store(self, PUBLIC), "--ca-fingerprint", fingerprint
        )
        self.assertEqual(code, 1)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(UNKNOWN_CA.encode(), err)
        self.assertIn(b"register with --system-trust", err)
        self.assertFalse((self.state_dir / "connector.key").exists())

    async def handshake(self, host: str) -> Any:
        # The handshake alone: the service's admission comes after it.
        pair = pki.issue_connector_certificate(self.d.ca, "cn-0123456789abcdef", "default")
        options = tunnel_client_options(host, None, pair.cert_pem, pair.key_pem)
        done: Deferred[Any] = Deferred()
        protocol = _Handshake(done)
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", self.d.tunnel_port)
        await wrapClientTLS(options, tcp).connect(Factory.forProtocol(lambda: protocol))
        try:
            return await done
        except Exception:
            return describe_tunnel_failure(Failure(), protocol.tls, host, SYSTEM_TRUST_HINT)

    async def test_tunnel_handshake(self) -> None:
        """The tunnel's TLS (L{tunnel_client_options} without a CA): the system store, names
        checked."""
        use_store(self, trust_store(self, PUBLIC))
        self.assertEqual(await self.handshake(TUNNEL_HOST), b"h2")
        mismatch = await self.handshake("other.example.test")
        self.assertIn("not valid for other.example.test (name mismatch", mismatch)
        use_store(self, trust_store(self, OTHER))
        refused = await self.handshake(TUNNEL_HOST)
        self.assertEqual(refused, f"{UNKNOWN_CA} we trust (unknown CA) ({SYSTEM_TRUST_HINT})")


class ConfigTests(SynchronousTestCase):
    """connector.toml's C{service_trust}."""

    def write(self, *lines: str) -> Path:
        base = Path(self.mktemp())
        base.mkdir()
        pair = pki.issue_connector_certificate(PUBLIC, "cn-0123456789abcdef", "default")
        (base / "connector.pem").write_bytes(pair.cert_pem)
        (base / "connector.key").write_bytes(pair.key_pem)
        (base / "ca.pem").write_bytes(PUBLIC.cert_pem)
        path = base / "connector.toml"
        head = ["[connector]", 'service_host = "tunnel.example.test"']
        tail = ['cert = "connector.pem"', 'key = "connector.key"']
        path.write_text("\n".join([*head, *lines, *tail]) + "\n")
        return path

    def test_default_is_the_pinned_ca(self) -> None:
        config = load_connector_config(self.write('ca = "ca.pem"'))
        self.assertEqual(config.service_trust, "ca")
        self.assertEqual(config.service_ca_pem, PUBLIC.cert_pem)

    def test_system(self) -> None:
        config = load_connector_config(self.write('service_trust = "system"', 'ca = "ca.pem"'))
        self.assertIsNone(config.service_ca_pem)
        self.assertEqual(config.ca_pem, PUBLIC.cert_pem)
        # The CA may be left out then.
        config = load_connector_config(self.write('service_trust = "system"'))
        self.assertEqual((config.ca, config.ca_pem, config.service_ca_pem), (None, None, None))

    def test_refused(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load_connector_config(self.write('service_trust = "public"'))
        self.assertIn("service_trust", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            load_connector_config(self.write())
        self.assertIn("connector.ca", str(caught.exception))

    def test_expired_message(self) -> None:
        """An expired connector is told to register again with --system-trust."""
        pair = pki.issue_connector_certificate(PUBLIC, "cn-0123456789abcdef", "default")
        from appproxy.connector.enrolment import ServiceAddress

        message = expired_message(
            pair.cert_pem,
            Path("connector.pem"),
            None,
            ServiceAddress("tunnel.example.test", 8444),
            Path("/var/lib/appproxy-connector"),
            4e9,
        )
        assert message is not None
        self.assertIn(" --system-trust --state-dir ", message)
        self.assertNotIn("--ca-fingerprint", message)
