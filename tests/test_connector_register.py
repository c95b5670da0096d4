"""
C{appproxy-connector register}, the installed console script, against a
real HTTPS server on loopback speaking the enrolment API's contract
(L{tests.enrolment_server}): the CA's fingerprint checked before anything
is sent, the key made on the connector's host (0600), a one-time token or
the device flow (RFC 8628), the files the daemon then reads; and every
refusal one clear line with exit status 1.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import stat
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from appproxy.cli.main import main as appproxy_main
from appproxy.config import load_connector_config
from appproxy.connector.device import DeviceFlowError, device_id_token
from appproxy.daemon import pki
from appproxy.daemon.connector_tap import load_connector
from appproxy.tunnel.enrolment import RegistrationInfo
from tests.deployment import DOMAIN, Deployment
from tests.enrolment_server import GOOD_TOKEN, ID_TOKEN, SERVICE_HOST, FakeService, start_server

SCRIPT = str(Path(sys.executable).parent / "appproxy-connector")
CA = pki.generate_ca("test connector CA")


class RegisterTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.state = FakeService(CA)
        start_server(self.state, self.addCleanup)
        self.dir = Path(self.mktemp())
        self.token = Path(self.mktemp())
        self.token.write_text(GOOD_TOKEN + "\n")
        self.token.chmod(0o600)
        self.idp_ca = Path(self.mktemp())
        self.idp_ca.write_bytes(CA.cert_pem)

    def run_register(self, *extra: str, fingerprint: str | None = None) -> Deferred[Any]:
        args = [
            "register",
            "--service",
            f"https://{SERVICE_HOST}:{self.state.port}",
            "--address",
            "127.0.0.1",
            "--state-dir",
            str(self.dir),
            "--ca-fingerprint",
            fingerprint or pki.ca_fingerprint(CA.cert_pem).upper().replace("SHA256:", ""),
            "--name",
            "host-1",
            *extra,
        ]
        return getProcessOutputAndValue(SCRIPT, args, env=dict(os.environ), reactor=reactor)

    async def test_register_with_token(self) -> None:
        out, err, code = await self.run_register("--token-file", str(self.token))
        self.assertEqual((code, err), (0, b""), out)
        [sent] = self.state.calls.registered
        self.assertEqual((sent.token, sent.host_name, sent.group), (GOOD_TOKEN, "host-1", None))
        key = self.dir / "connector.key"
        self.assertEqual(stat.S_IMODE(key.stat().st_mode), 0o600)
        # The key was made here: the CSR sent is for it, and so is the certificate.
        csr = x509.load_pem_x509_csr(sent.csr.encode())
        config = load_connector_config(self.dir / "connector.toml")
        cert = x509.load_pem_x509_certificate(config.cert.cert_pem)
        self.assertEqual(csr.public_key(), cert.public_key())
        identity = pki.connector_identity(cert)
        self.assertIn(identity.connector_id.encode(), out)
        self.assertEqual(config.ca_pem, CA.cert_pem)
        # The pinned CA verifies the service (not the system trust store).
        self.assertEqual((config.service_trust, config.service_ca_pem), ("ca", CA.cert_pem))
        self.assertEqual(
            (config.service_host, config.service_port, config.service_address),
            (SERVICE_HOST, self.state.port, "127.0.0.1"),
        )
        self.assertIn(b"twistd appproxy-connector --config", out)

        # Registered already: refused without --force, replaced with it.
        out, err, code = await self.run_register("--token-file", str(self.token))
        self.assertEqual(code, 1)
        self.assertIn(b"--force", err)
        self.assertEqual(len(err.splitlines()), 1)
        out, err, code = await self.run_register("--token-file", str(self.token), "--force")
        self.assertEqual(code, 0, err)
        again = load_connector_config(self.dir / "connector.toml")
        self.assertNotEqual(again.cert.key_pem, config.cert.key_pem)

    async def test_wrong_fingerprint_sends_nothing(self) -> None:
        other = pki.ca_fingerprint(pki.generate_ca("another CA").cert_pem)
        _, err, code = await self.run_register("--token-file", str(self.token), fingerprint=other)
        self.assertEqual(code, 1)
        self.assertIn(b"may be intercepted", err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertEqual(self.state.calls.paths, ["/v1/ca"])
        self.assertFalse(self.dir.exists())

    async def test_refused_token(self) -> None:
        self.token.write_text("appproxy-enrol.ffffffff.wrong")
        self.token.chmod(0o644)
        _, err, code = await self.run_register("--token-file", str(self.token))
        self.assertEqual(code, 1)
        warning, _refused = err.splitlines()
        self.assertIn(
            b"warning: " + str(self.token).encode() + b" is readable by every user", warning
        )
        self.assertIn(b"registration refused", err)
        self.assertIn(b"the enrolment token is unknown", err)
        self.assertNotIn(b"Traceback", err)
        self.assertFalse((self.dir / "connector.key").exists())

    async def test_usage_errors(self) -> None:
        _, err, code = await self.run_register("--token-file", str(self.token), fingerprint="12")
        self.assertEqual(code, 2)
        self.assertIn(b"not a SHA-256 fingerprint", err)
        _, err, code = await getProcessOutputAndValue(
            SCRIPT, ["register", "--service", "http://x"], env=dict(os.environ), reactor=reactor
        )
        self.assertEqual(code, 2)
        # Exactly one of --ca-fingerprint and --system-trust.
        _, err, code = await self.run_register("--token-file", str(self.token), "--system-trust")
        self.assertEqual(code, 2)
        self.assertIn(b"--system-trust: not allowed with argument --ca-fingerprint", err)
        base = ["register", "--service", "https://tunnel.test", "--state-dir", str(self.dir)]
        _, err, code = await getProcessOutputAndValue(
            SCRIPT, base, env=dict(os.environ), reactor=reactor
        )
        self.assertEqual(code, 2)
        self.assertIn(b"one of the arguments --ca-fingerprint --system-trust is required", err)
        self.assertEqual(self.state.calls.paths, [])

    async def test_unreachable_service(self) -> None:
        port = self.state.port
        self.state.port = 1  # nothing listens there
        try:
            _, err, code = await self.run_register("--token-file", str(self.token))
        finally:
            self.state.port = port
        self.assertEqual(code, 1)
        self.assertIn(b"127.0.0.1", err)
        self.assertEqual(len(err.splitlines()), 1, err)

    async def test_device_flow(self) -> None:
        """
        No token file: the device flow against the provider the service
        names (trusted through --idp-ca), the code shown, polls while the
        approval is pending, then the ID token goes with the CSR.
        """
        self.state.device_script = ["authorization_pending"]
        out, err, code = await self.run_register("--idp-ca", str(self.idp_ca))
        self.assertEqual(code, 0, err)
        self.assertIn(b"BCDF-GHJK", out)
        self.assertIn(f"https://localhost:{self.state.port}/device".encode(), out)
        self.assertEqual(len(self.state.calls.polls), 2)
        self.assertGreaterEqual(self.state.calls.polls[1] - self.state.calls.polls[0], 0.9)
        [sent] = self.state.calls.registered
        self.assertEqual(sent.token, ID_TOKEN)

    async def test_device_flow_untrusted_provider(self) -> None:
        """Without --idp-ca the provider's certificate (a private CA) is not trusted."""
        _, err, code = await self.run_register()
        self.assertEqual(code, 1)
        self.assertIn(b"OpenID provider", err)
        self.assertEqual(self.state.calls.registered, [])

    async def test_no_device_registration(self) -> None:
        self.state.device_offered = False
        _, err, code = await self.run_register()
        self.assertEqual(code, 1)
        self.assertIn(b"--token-file", err)


class DevicePollingTests(TestCase):
    """The RFC 8628 polling, in process (a short slow_down step to stay fast)."""

    timeout = 30

    def setUp(self) -> None:
        self.state = FakeService(CA, device_interval=0.2)
        start_server(self.state, self.addCleanup)
        self.lines: list[str] = []

    def flow(self) -> Deferred[str]:
        base = f"https://localhost:{self.state.port}"
        info = RegistrationInfo(
            issuer=base,
            device_authorization_endpoint=f"{base}/device_authorization",
            token_endpoint=f"{base}/token",
            client_id="appproxy-connector",
            scope="openid profile",
            groups=(),
        )
        return ensureDeferred(
            device_id_token(
                reactor,
                info,
                self.lines.append,
                idp_ca_pem=CA.cert_pem,
                slow_down_step=0.3,
            )
        )

    async def test_slow_down_widens_the_interval(self) -> None:
        self.state.device_script = ["authorization_pending", "slow_down", "authorization_pending"]
        start = time.monotonic()
        token = await self.flow()
        self.assertEqual(token, ID_TOKEN)
        polls = self.state.calls.polls
        self.assertEqual(len(polls), 4)
        gaps = [b - a for a, b in itertools.pairwise(polls)]
        self.assertGreaterEqual(gaps[0], 0.18)
        # After slow_down, every interval is 0.3 s longer.
        self.assertGreaterEqual(gaps[1], 0.45)
        self.assertGreaterEqual(gaps[2], 0.45)
        self.assertLess(time.monotonic() - start, 10)
        self.assertIn("and enters the code: BCDF-GHJK", self.lines)

    async def test_denied(self) -> None:
        self.state.device_script = ["authorization_pending", "access_denied"]
        with self.assertRaises(DeviceFlowError) as caught:
            await self.flow()
        self.assertIn("denied", str(caught.exception))

    async def test_expired(self) -> None:
        self.state.device_script = ["expired_token"]
        with self.assertRaises(DeviceFlowError) as caught:
            await self.flow()
        self.assertIn("expired", str(caught.exception))


class _Deployment(Deployment):
    """The in-tree deployment, its service able to sign: C{[tunnel] connector_ca_key}."""

    def write_service_config(self, public: int = 0, tunnel: int = 0) -> Path:
        self._write("ca.key", self.ca.key_pem)
        path = super().write_service_config(public, tunnel)
        text = path.read_text().replace(
            'connector_ca = "ca.pem"\n', 'connector_ca = "ca.pem"\nconnector_ca_key = "ca.key"\n'
        )
        path.write_text(text)
        return path


class RealServiceTests(TestCase):
    """Registration, pull, tunnel and renewal against the real service (in process)."""

    timeout = 120

    def token(self, d: Deployment) -> Path:
        """A one-time token, as the administrator makes it: `appproxy connectors token create`."""
        out = io.StringIO()
        config = str(d.root / "service.toml")
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

    async def test_register_pull_serve_renew(self) -> None:
        d = _Deployment(self, [{"name": "web", "external_url": f"https://web.{DOMAIN}/"}], 5.0)
        d.start_service()
        assert d.service is not None
        state_dir = Path(self.mktemp())
        token = self.token(d)
        args = [
            "register",
            "--service",
            f"https://tunnel.{DOMAIN}:{d.tunnel_port}",
            "--address",
            "127.0.0.1",
            "--state-dir",
            str(state_dir),
            "--ca-fingerprint",
            pki.ca_fingerprint(d.ca.cert_pem),
            "--token-file",
            str(token),
        ]
        out, err, code = await getProcessOutputAndValue(
            SCRIPT, args, env=dict(os.environ), reactor=reactor
        )
        self.assertEqual((code, err), (0, b""), out)
        self.assertIn(b"in group default", out)
        # The token was for one use only.
        again = [*args, "--force"]
        _, err, code = await getProcessOutputAndValue(
            SCRIPT, again, env=dict(os.environ), reactor=reactor
        )
        self.assertEqual(code, 1)
        self.assertIn(b"registration refused", err)
        self.assertEqual(len(err.splitlines()), 1, err)

        # The registered connector pulls its configuration and serves.
        await d.service.refresh_admission()
        connector = load_connector(state_dir / "connector.toml", reactor)
        d.connectors.append(connector)
        self.addCleanup(lambda: connector.stopService() if connector.running else None)
        connector.startService()
        await d.wait_for_connections(4)
        assert connector.trust is not None and connector.trust.settings is not None
        self.assertEqual([a.name for a in connector.trust.settings.apps], ["web"])
        response = await d.client().get(d.url("web", "/hello"))
        self.assertEqual(response.code, 200)
        await response.content()

        # Renewal: a new certificate from the service, the old serial retired;
        # the tunnels carry on, and pulls go on with the new certificate.
        old = (state_dir / "connector.pem").read_bytes()
        await ensureDeferred(connector.trust.renew())
        new = (state_dir / "connector.pem").read_bytes()
        self.assertNotEqual(pki.certificate_serial(old), pki.certificate_serial(new))
        pulls = connector.trust.pulls
        connector.trust.pull()
        for _ in range(200):
            if connector.trust.pulls > pulls:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertGreater(connector.trust.pulls, pulls)
        response = await d.client().get(d.url("web", "/after"))
        self.assertEqual(response.code, 200)
        await response.content()
