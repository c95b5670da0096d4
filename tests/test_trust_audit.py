"""
The service's admission gate and audit trail (L{appproxy.trust.admission},
L{appproxy.trust.audit}) over a real SQLite state database: refusals are
logged as formatted lines (the event's address in the line's fields), rate
limited per certificate I{and reason}, and a refresh reads what was written
before it was asked for, even with a read already under way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from twisted.internet import reactor
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from appproxy.daemon import pki
from appproxy.state import connectors
from appproxy.state.database import StateDatabase
from appproxy.state.schema import DATABASE_NAME
from appproxy.trust.admission import AdmissionGate
from appproxy.tunnel.queue import ConnectorGroups
from appproxy.tunnel.service import ServiceTunnelFactory
from tests import connectors_db

CA = pki.generate_ca("audit test CA")


class GateTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.state_dir = Path(self.mktemp())
        self.state_dir.mkdir(parents=True)
        self.database = StateDatabase.open_at_startup(self.state_dir / DATABASE_NAME)
        self.addCleanup(self.database.close)
        factory = ServiceTunnelFactory(reactor, ConnectorGroups(reactor, 5.0), [])
        self.gate = AdmissionGate(self.database, reactor, factory)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def lines(self, namespace: str = "appproxy.trust.audit") -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_namespace") == namespace]

    async def audited(self, event: str) -> list[connectors.AuditEvent]:
        events: list[connectors.AuditEvent] = await self.database.run_interaction(
            lambda txn: connectors.read_audit(txn, since=None, limit=100)
        )
        return [e for e in events if e.event == event]

    async def test_message_over_the_address(self) -> None:
        """A limited event's line may name its address: it is among the line's fields."""
        self.gate.audit.record_limited(
            "refused",
            key="address:192.0.2.7",
            address="192.0.2.7",
            connector_id="cn-0123456789abcdef",
            detail={"reason": "test"},
            message="Refused {what} from {address} (connector {connector_id})",
            what="a call",
        )
        lines = self.lines()
        self.assertEqual(
            lines, ["Refused a call from 192.0.2.7 (connector cn-0123456789abcdef)"], lines
        )
        self.assertNotIn("Unable to format", "".join(lines))

    async def test_a_new_reason_is_told(self) -> None:
        """
        One certificate refused as disabled, then (within the interval) as
        revoked: both are logged and audited; the same reason again is not.
        """
        pair = connectors_db.issue(self.state_dir, CA, "cn-00000000000000aa", "default")
        certificate = x509.load_pem_x509_certificate(pair.cert_pem)
        now = time.time()
        for state in ("disabled", "disabled", "revoked", "revoked"):
            await self.database.run_interaction(
                lambda txn, state: connectors.set_connector_state(
                    txn, "cn-00000000000000aa", state, actor="tests", reason=None, now=now
                ),
                state,
            )
            await self.gate.refresh()
            checked = self.gate.check(certificate)
            assert checked is not None
            self.assertEqual(checked.refusal, state)
            self.gate.refuse(checked, "127.0.0.1", "a tunnel connection")
        refused = await self.audited("refused")
        self.assertEqual([e.detail["reason"] for e in refused], ["disabled", "revoked"])
        lines = self.lines()
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("Refused a tunnel connection from 127.0.0.1", lines[0])
        self.assertIn("disabled", lines[0])
        self.assertIn("revoked", lines[1])

    async def test_refresh_reads_after_the_write(self) -> None:
        """
        A refresh asked for while a read is under way (the 1 s poll) is
        answered by a read begun after it: what was written before it is in
        force when it fires.
        """
        for i in range(20):
            polling = self.gate.poll()  # a read under way, begun before the write
            connector_id = f"cn-{i:016x}"
            pair = connectors_db.issue(self.state_dir, CA, connector_id, "default")
            serial = pki.certificate_serial(pair.cert_pem)
            await self.gate.refresh()
            admission = self.gate.admission
            assert admission is not None
            self.assertIsNone(admission.decide(serial, connector_id))
            await polling
