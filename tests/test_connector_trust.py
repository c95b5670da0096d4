"""
The connector's trust for its whole life, at the connector's level: the
origin check (only the apps and internal origins of the pulled
configuration), the configuration pull (before any tunnel is dialled, on
each settings push), renewal (crash-safe files, the new certificate for new
connections), and the clear stop on an expired certificate.  Against a
real HTTPS server on loopback speaking the enrolment API
(L{tests.enrolment_server}).
"""

from __future__ import annotations

import datetime
import io
import stat
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from appproxy.cli.connector_main import Registration, register
from appproxy.connector import trust as connector_trust
from appproxy.connector.enrolment import ServiceAddress
from appproxy.connector.keyfiles import install_renewal, key_matches, recover_renewal
from appproxy.connector.origins import AllowedOrigins, origin
from appproxy.daemon import pki
from appproxy.daemon.connector_tap import ConnectorService, load_connector
from appproxy.daemon.csr import make_csr, new_connector_key, sign_connector_csr
from appproxy.tunnel.enrolment import AppSettings
from tests.enrolment_server import GOOD_TOKEN, SERVICE_HOST, FakeService, start_server
from tests.test_connector_websocket import UpgradeEnd
from tests.test_tunnel_tls_failures import _events, _text
from tests.tunnel_memory import ConnectorEnd

CA = pki.generate_ca("test connector CA")
WEB = AppSettings("web", "http://127.0.0.1:9/", True, None, 30.0)
SETTINGS = b'{"apps": {"web": {"verify_tls": true, "timeout": 30.0}}}'


class OriginTests(SynchronousTestCase):
    def test_normalised(self) -> None:
        self.assertEqual(origin("HTTP", "App.Internal:80"), "http://app.internal")
        self.assertEqual(origin("https", "app:443"), "https://app")
        self.assertEqual(origin("https", "app:80"), "https://app:80")
        self.assertEqual(origin("http", "[::1]:8080"), "http://[::1]:8080")
        self.assertEqual(origin("http", "[::1]"), "http://[::1]")

    def test_refusals(self) -> None:
        allowed = AllowedOrigins.of([("web", "http://127.0.0.1:9/"), ("s", "https://s.lan/x/")])
        self.assertIsNone(allowed.refusal("web", b"http", b"127.0.0.1:9"))
        self.assertIsNone(allowed.refusal("s", b"https", b"S.lan:443"))
        self.assertIn("not in this connector", allowed.refusal("other", b"http", b"x") or "")
        self.assertIn(
            "not the internal origin", allowed.refusal("web", b"https", b"127.0.0.1:9") or ""
        )
        self.assertIn(
            "not the internal origin", allowed.refusal("web", b"http", b"10.0.0.1:22") or ""
        )

    @given(
        scheme=st.sampled_from(["http", "https"]),
        host=st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True),
        port=st.one_of(st.none(), st.integers(1, 65535)),
        upper=st.booleans(),
    )
    def test_origin_property(self, scheme: str, host: str, port: int | None, upper: bool) -> None:
        """An app's URL and the fields the service sends for it always match, whatever the case."""
        netloc = host if port is None else f"{host}:{port}"
        allowed = AllowedOrigins.of([("a", f"{scheme}://{netloc}/p/")])
        sent = netloc.upper() if upper else netloc
        self.assertIsNone(allowed.refusal("a", scheme.encode(), sent.encode()))
        self.assertEqual(
            origin(scheme, origin(scheme, netloc).split("://")[1]), origin(scheme, netloc)
        )
        # Another port is another origin.
        other = (port or 1) % 65535 + 1
        if other not in (port, {"http": 80, "https": 443}[scheme]) and port is not None:
            self.assertIsNotNone(allowed.refusal("a", scheme.encode(), f"{host}:{other}".encode()))


class OriginHookTests(SynchronousTestCase):
    """The hook in the connector's tunnel factory: refused streams never reach a backend."""

    def end(self) -> ConnectorEnd:
        end = UpgradeEnd()
        self.addCleanup(end.close)
        self.pushed = 0

        def pushed() -> None:
            self.pushed += 1

        end.factory.origins = AllowedOrigins.of([("web", "http://127.0.0.1:9/")]).refusal
        end.factory.settings_pushed = pushed
        end.push_settings(SETTINGS)
        self.assertEqual(self.pushed, 1)
        return end

    def test_push_answered_after_the_pull(self) -> None:
        """In the daemon a push is applied and answered once the pull it triggers is done."""
        end = UpgradeEnd()
        self.addCleanup(end.close)
        pulled: Deferred[None] = Deferred()
        end.factory.settings_pushed = lambda: pulled
        sid = end.push_settings(SETTINGS)
        self.assertNotIn(sid, end.responses())
        self.assertNotIn("web", end.factory.backend.apps)
        pulled.callback(None)
        end.pump()
        self.assertEqual(end.responses()[sid][b":status"], b"204")
        self.assertIn("web", end.factory.backend.apps)

    def test_request_to_configured_origin(self) -> None:
        end = self.end()
        end.user_request(b"GET", b"/")
        self.assertEqual(len(end.clock.tcpClients), 1)

    def test_foreign_origin_refused(self) -> None:
        end = self.end()
        sid = end.request(
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"10.0.0.1:22"),
                (b":path", b"/"),
                (b"appproxy-app", b"web"),
            ]
        )
        answer = end.responses()[sid]
        self.assertEqual(
            (answer[b":status"], answer[b"appproxy-error"]), (b"502", b"connector-error")
        )
        self.assertIn(b"10.0.0.1:22", answer[b"appproxy-error-detail"])
        self.assertEqual(end.clock.tcpClients, [])

    def test_unconfigured_app_refused(self) -> None:
        """Even an app the pushed settings name: only the pulled configuration counts."""
        end = self.end()
        end.push_settings(b'{"apps": {"web": {}, "intra": {}}}')
        sid = end.user_request(b"GET", b"/", app=b"intra")
        answer = end.responses()[sid]
        self.assertEqual(
            (answer[b":status"], answer[b"appproxy-error"]), (b"502", b"connector-error")
        )
        self.assertEqual(end.clock.tcpClients, [])

    def test_websocket_to_foreign_origin_refused(self) -> None:
        end = self.end()
        sid = end.request(
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", b"https"),
                (b":authority", b"127.0.0.1:9"),
                (b":path", b"/ws"),
                (b"appproxy-app", b"web"),
                (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
                (b"sec-websocket-version", b"13"),
            ]
        )
        answer = end.responses()[sid]
        self.assertEqual(
            (answer[b":status"], answer[b"appproxy-error"]), (b"502", b"connector-error")
        )
        self.assertEqual(end.clock.tcpClients + end.clock.sslClients, [])


def _pair(
    lifetime: datetime.timedelta, connector_id: str = "cn-0123456789abcdef"
) -> tuple[bytes, bytes]:
    key = new_connector_key()
    return sign_connector_csr(CA, make_csr(key), connector_id, "default", lifetime=lifetime), key


class KeyFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.cert, self.key = self.dir / "connector.pem", self.dir / "connector.key"
        self.old = _pair(datetime.timedelta(days=30))
        self.new = _pair(datetime.timedelta(days=30))
        self.cert.write_bytes(self.old[0])
        self.key.write_bytes(self.old[1])

    def files(self) -> tuple[bytes, bytes]:
        return self.cert.read_bytes(), self.key.read_bytes()

    def test_install(self) -> None:
        install_renewal(self.cert, self.key, *self.new)
        self.assertEqual(self.files(), self.new)
        self.assertEqual(stat.S_IMODE(self.key.stat().st_mode), 0o600)
        self.assertEqual(
            sorted(p.name for p in self.dir.iterdir()), ["connector.key", "connector.pem"]
        )
        with self.assertRaises(ValueError):
            install_renewal(self.cert, self.key, self.old[0], self.new[1])
        self.assertEqual(self.files(), self.new)

    def test_crash_before_renames(self) -> None:
        """Both .new files written: the renewal is finished at start."""
        (self.dir / "connector.key.new").write_bytes(self.new[1])
        (self.dir / "connector.pem.new").write_bytes(self.new[0])
        self.assertIn("finished", recover_renewal(self.cert, self.key) or "")
        self.assertEqual(self.files(), self.new)

    def test_crash_between_renames(self) -> None:
        """The certificate renamed, not the key: the key follows."""
        self.cert.write_bytes(self.new[0])
        (self.dir / "connector.key.new").write_bytes(self.new[1])
        self.assertFalse(key_matches(*self.files()))
        self.assertIn("finished", recover_renewal(self.cert, self.key) or "")
        self.assertEqual(self.files(), self.new)

    def test_crash_while_writing(self) -> None:
        """A half-written .new file: removed, the old pair kept."""
        (self.dir / "connector.key.new").write_bytes(self.new[1][:40])
        self.assertIn("removed", recover_renewal(self.cert, self.key) or "")
        self.assertEqual(self.files(), self.old)
        self.assertIsNone(recover_renewal(self.cert, self.key))


@implementer(IStreamClientEndpoint)
class _Pending:
    """Tunnel dials that never complete (the test server speaks no tunnel)."""

    def __init__(self) -> None:
        self.dials = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.dials += 1
        return Deferred()


class DaemonTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.state = FakeService(CA, apps=(WEB,), connections=2)
        start_server(self.state, self.addCleanup)
        self.dir = Path(self.mktemp())
        token = Path(self.mktemp())
        token.write_text(GOOD_TOKEN)
        registration = Registration(
            service=ServiceAddress(SERVICE_HOST, self.state.port, "127.0.0.1"),
            state_dir=self.dir,
            fingerprint=pki.ca_fingerprint(CA.cert_pem),
            group=None,
            token_file=token,
            idp_ca=None,
            host_name="h",
            force=False,
        )
        self.assertEqual(await register(reactor, registration, io.StringIO(), io.StringIO()), 0)
        self.state.calls.paths.clear()

    def start(self) -> tuple[ConnectorService, _Pending]:
        service = load_connector(self.dir / "connector.toml", reactor)
        pending = service.endpoint = _Pending()  # type: ignore[assignment]
        service.startService()
        self.addCleanup(service.stopService)
        return service, pending

    async def until(self, condition: Any) -> None:
        for _ in range(200):
            if condition():
                return
            await deferLater(reactor, 0.05, lambda: None)
        self.fail("the condition never held")

    async def test_pull_then_dial(self) -> None:
        service, pending = self.start()
        check = service.factory.origins
        pushed = service.factory.settings_pushed
        assert check is not None and pushed is not None
        # Nothing is dialled, and everything refused, before the pull.
        self.assertEqual(pending.dials, 0)
        self.assertIn("no configuration", check("web", b"http", b"127.0.0.1:9") or "")
        await self.until(lambda: service.trust.pulls == 1)
        self.assertEqual(pending.dials, 2)  # the pulled connections, not the file's 4
        self.assertIsNone(check("web", b"http", b"127.0.0.1:9"))
        self.assertIsNotNone(check("web", b"http", b"127.0.0.1:10"))
        # A settings push (the service reloaded) pulls again.
        self.state.apps = (WEB, AppSettings("intra", "https://intra.lan/", True, None, 5.0))
        acknowledged = pushed()
        assert acknowledged is not None
        self.assertNoResult(acknowledged)  # the push is answered once the pull is done
        await acknowledged
        self.assertEqual(service.trust.pulls, 2)
        self.assertIsNone(check("intra", b"https", b"intra.lan"))
        self.assertEqual(self.state.calls.paths, ["/v1/config", "/v1/config"])

    async def test_renewal(self) -> None:
        """
        Due (renew_after 0): a new key and certificate on disk, the old
        serial retired at the service, new connections and calls present
        the new certificate.
        """
        self.state.renew_after = 0.0
        self.state.config_interval = 3600.0
        before = (self.dir / "connector.pem").read_bytes()
        service, _ = self.start()
        tls_before = service.tls.current
        await self.until(lambda: service.trust.renewals == 1)
        after = (self.dir / "connector.pem").read_bytes()
        self.assertNotEqual(after, before)
        self.assertTrue(key_matches(after, (self.dir / "connector.key").read_bytes()))
        self.assertEqual(stat.S_IMODE((self.dir / "connector.key").stat().st_mode), 0o600)
        self.assertEqual(self.state.calls.retired, {pki.certificate_serial(before)})
        self.assertIsNot(service.tls.current, tls_before)
        self.assertEqual(service.config.cert.cert_pem, after)
        old_id = pki.connector_identity(x509.load_pem_x509_certificate(before)).connector_id
        new_id = pki.connector_identity(x509.load_pem_x509_certificate(after)).connector_id
        self.assertEqual(old_id, new_id)
        # The next pull presents the new certificate (the old one is refused now).
        self.state.renew_after = 1e9
        service.trust.pull()
        await self.until(lambda: service.trust.pulls == 2)
        self.assertEqual(self.state.calls.config_serials[-1], pki.certificate_serial(after))

    async def test_failed_renewal_is_retried(self) -> None:
        """
        A refused renewal: the connector serves on with its certificate, says
        why once, and tries again by itself with backoff (a pull does not
        hurry it) until it works.
        """
        self.patch(connector_trust, "FIRST_RETRY", 0.2)
        events = _events(self)
        self.state.renew_after = 0.0
        real = self.state.lifetime
        self.state.lifetime = datetime.timedelta(days=-1)  # the server cannot sign: 400
        service, pending = self.start()
        trust = service.trust
        await self.until(lambda: trust.renew_attempts >= 3)
        self.assertEqual(trust.renewals, 0)
        self.assertEqual(pending.dials, 2)  # the connector serves on with its certificate
        before = trust.renew_attempts
        for _ in range(3):
            await trust.pulled(5.0)
        self.assertEqual(trust.pulls, 4)
        self.assertLessEqual(trust.renew_attempts, before + 1)
        told = [t for t in _text(events) if t.startswith("Cannot renew this connector's")]
        self.assertEqual(len(told), 1, told)
        self.assertIn("the service answered 400", told[0])
        self.assertIn("the certificate expires at", told[0])
        self.assertEqual(self.state.calls.paths.count("/v1/renew"), trust.renew_attempts)
        self.state.lifetime = real
        await self.until(lambda: trust.renewals == 1)
        self.flushLoggedErrors()

    def test_expired_certificate_at_start(self) -> None:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        cert = x509.load_pem_x509_certificate((self.dir / "connector.pem").read_bytes())
        later = cert.not_valid_after_utc.timestamp() + 1
        with self.assertRaises(SystemExit) as caught:
            load_connector(self.dir / "connector.toml", reactor, now=later)
        self.assertEqual(caught.exception.code, 1)
        message = err.getvalue()
        self.assertEqual(len(message.splitlines()), 1)
        self.assertIn("expired on", message)
        self.assertIn("appproxy connectors token create --group default", message)
        self.assertIn(f"--service https://{SERVICE_HOST}:{self.state.port}", message)
        self.assertIn(pki.ca_fingerprint(CA.cert_pem), message)
        self.assertIn("--force", message)
