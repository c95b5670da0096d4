"""
Certificate renewal with requests flowing, end to end, and the retired
certificate refused afterwards (L{tests.trust_deployment}).

The daemons cannot wait 180 days, so the clock is simulated on the
certificate: the connector is handed a certificate for its own key made 200
days ago (recorded as its current one, as if a renewal had made it then),
told to reload its files (SIGHUP), and the service is reloaded (SIGHUP),
which pushes its settings on every tunnel connection: the connector pulls its
configuration, finds its certificate older than C{renew_after_days} and
renews it while requests keep flowing.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from appproxy.daemon import pki
from tests import connectors_db
from tests.test_daemons import replace_once, twistd
from tests.trust_deployment import (
    WAIT,
    Connector,
    Files,
    TrustDeployment,
    start,
)
from tests.trust_load import RequestLoop
from tests.websocket_clients import wait_until

AGE = datetime.timedelta(days=200)


def backdate(d: TrustDeployment, connector: Connector) -> bytes:
    """
    A certificate for the connector's key, as the service would have made
    it C{AGE} ago, installed (crash-safely) and recorded as its current one.
    """
    key = serialization.load_pem_private_key(connector.key_pem, password=None)
    then = datetime.datetime.now(datetime.UTC) - AGE
    cert_pem = pki.connector_certificate(
        d.ca, key.public_key(), connector.id, "default", datetime.timedelta(days=365), then
    )
    connectors_db.renew(d.state_dir, connector.cert_pem, cert_pem)
    path = connector.directory / "connector.pem"
    new = path.with_suffix(".tmp")
    new.write_bytes(cert_pem)
    os.replace(new, path)
    return cert_pem


def admitted(d: TrustDeployment, files: Files) -> Callable[[], Deferred[bool]]:
    """
    Whether the service admits a certificate (it re-reads its registry every
    second: a change made in its database behind its back shows up then).
    """

    def check() -> Deferred[bool]:
        return d.api("GET", "/v1/config", cert=files).addCallback(lambda answer: answer[0] == 200)

    return check


class RenewalTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_renewal_with_requests_flowing(self) -> Any:
        """
        A connector whose certificate is past renew_after renews it at its
        next configuration pull, while requests flow through it: none is
        lost, its open tunnel connections carry on, new ones present the
        renewed certificate (admitted), and the retired certificates are
        refused afterwards at the tunnel (audited clone-suspected) and at
        the API (certificate_retired). The inventory shows the new serial.
        """
        d = yield start(self, connectors="connections = 2\n")
        connector = yield d.register_with_token("one")
        yield d.start_connector_daemon(connector, connections=2)
        assert connector.process is not None
        loop = RequestLoop(d).start()
        self.addCleanup(loop.stop)
        yield loop.wait(30)

        original = connector.files(keep="original")
        old_pem = backdate(d, connector)
        backdated = connector.files(keep="backdated")
        yield wait_until(admitted(d, backdated), "the back-dated certificate admitted", 5)
        since = time.time()
        connector.process.signal("HUP")
        yield connector.process.wait_for("Configuration reloaded")
        d.service_process.signal("HUP")
        yield connector.process.wait_for("Certificate renewed")
        yield loop.wait(30)
        renewed_pem = connector.cert_pem
        self.assertNotEqual(renewed_pem, old_pem)
        renewed = x509.load_pem_x509_certificate(renewed_pem)
        self.assertLess(
            datetime.datetime.now(datetime.UTC) - renewed.not_valid_before_utc,
            datetime.timedelta(minutes=10),
        )
        self.assertEqual(pki.connector_identity(renewed).connector_id, connector.id)
        # The open tunnel connections carried on.
        self.assertEqual(d.connections(connector), 2)

        # A third connection (the service asks for it) presents the new certificate.
        yield wait_until(admitted(d, connector.files()), "the renewed certificate admitted", 5)
        replace_once(d.config_path, "connections = 2\n", "connections = 3\n")
        d.service_process.signal("HUP")
        yield d.wait_connections(connector, 3)
        yield loop.wait(30)
        yield loop.stop()
        self.assertEqual(loop.failures(), [])
        self.assertGreaterEqual(len(loop.results), 90)

        events = yield d.audit("renew", "clone-suspected", "refused")
        events = [e for e in events if e["epoch"] > since]
        self.assertEqual([e["event"] for e in events], ["renew"], events)
        self.assertEqual(events[0]["actor"], f"connector:{connector.id}")
        self.assertEqual(events[0]["detail"]["old_serial"], pki.certificate_serial(old_pem))
        self.assertEqual(events[0]["detail"]["serial"], pki.certificate_serial(renewed_pem))

        for files in (backdated, original):
            closed = yield d.tunnel_closed(files)
            self.assertTrue(closed)
        still_open = yield d.tunnel_closed(connector.files(), timeout=2.0)
        self.assertFalse(still_open)
        status, answer = yield d.api("GET", "/v1/config", cert=backdated)
        self.assertEqual((status, answer["error"]), (403, "certificate_retired"), answer)
        alerts = yield d.audit("clone-suspected")
        self.assertGreaterEqual(len(alerts), 2, alerts)
        self.assertEqual({e["connector_id"] for e in alerts}, {connector.id})
        # Logged as an error, with the peer's address.
        lines = [
            line
            for line in d.service_process.output().splitlines()
            if "#error]" in line and "was retired by a renewal" in line
        ]
        self.assertTrue(lines, d.tails())
        self.assertIn("Refused a tunnel connection from 127.0.0.1", lines[0])
        self.assertIn(connector.id, lines[0])

        items = yield d.list_json()
        self.assertEqual(items[connector.id]["serial"], pki.certificate_serial(renewed_pem))
        self.assertEqual(items[connector.id]["status"], "active")

    @inlineCallbacks
    def test_expired_certificate(self) -> Any:
        """
        An expired certificate is refused at the tunnel (audited expired);
        a connector daemon started with one exits at once with one clear
        error naming the expiry and what to run to register it again.
        """
        d = yield start(self)
        connector = yield d.register_with_token("one")
        key = serialization.load_pem_private_key(connector.key_pem, password=None)
        then = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=400)
        cert_pem = pki.connector_certificate(
            d.ca, key.public_key(), connector.id, "default", datetime.timedelta(days=365), then
        )
        (connector.directory / "connector.pem").write_bytes(cert_pem)
        closed = yield d.tunnel_closed(connector.files())
        self.assertTrue(closed)

        def expired() -> Any:
            return d.audit("expired").addCallback(
                lambda events: [e for e in events if e["connector_id"] == connector.id]
            )

        yield wait_until(expired, "the expired certificate audited", 10)

        config = connector.directory / "connector.toml"
        process = twistd(self, "appproxy-connector", config, d.root)
        status = yield process.ended(WAIT)
        self.assertNotEqual(status, (0, None), process.describe())
        output = process.output()
        self.assertNotIn("Traceback", output)
        self.assertIn("expired", output)
        self.assertIn("appproxy connectors token create --group default", output)
        self.assertIn("appproxy-connector register", output)
        self.assertIn("--force", output)
