"""
Tests for C{appproxy connectors ...} and C{appproxy logs audit}, on a
service directory C{appproxy init} made (its state database records the
connector init issued).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from appproxy.cli.connectors import local_actor
from appproxy.state import connectors as store
from appproxy.state.schema import BUSY_TIMEOUT_MS, configure_connection
from tests.servicedir import init_service_dir, service_config
from tests.test_cli_state import run

ROOT = Path(__file__).resolve().parent.parent


class ConnectorsCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = init_service_dir(Path(self.mktemp()))
        self.database = service_config(self.dir).state_dir / "appproxy.sqlite"
        self.state = ("--state-dir", str(self.dir))

    def ok(self, *argv: str) -> str:
        code, out, err = run(*argv, *self.state)
        self.assertEqual((code, err), (0, ""), argv)
        return out

    def fails(self, *argv: str, code: int = 1) -> str:
        status, out, err = run(*argv, *self.state)
        self.assertEqual((status, out), (code, ""), argv)
        return err

    def connect(self) -> Any:
        import sqlite3

        connection = sqlite3.connect(str(self.database), timeout=BUSY_TIMEOUT_MS / 1000)
        configure_connection(connection)
        self.addCleanup(connection.close)
        return connection

    def listed(self) -> dict[str, dict[str, Any]]:
        lines = self.ok("connectors", "list", "--json").splitlines()
        return {doc["id"]: doc for doc in map(json.loads, lines)}

    def test_list(self) -> None:
        """The connector init issued, as text and as JSON, with its figures."""
        (connector,) = self.listed().values()
        self.assertEqual(connector["group"], "default")
        self.assertEqual(connector["status"], "active")
        self.assertEqual(connector["state"], "enabled")
        self.assertEqual((connector["connections"], connector["streams"]), (0, 0))
        self.assertIsNone(connector["last_seen"])
        self.assertRegex(connector["serial"], r"\A[0-9a-f]+\Z")
        self.assertRegex(connector["not_after"], r"\A\d{4}-\d\d-\d\dT")
        store.touch_connectors(self.connect(), [(connector["id"], time.time(), "192.0.2.7", 3, 12)])
        again = self.listed()[connector["id"]]
        self.assertEqual((again["connections"], again["streams"]), (3, 12))
        self.assertEqual(again["last_address"], "192.0.2.7")
        text = self.ok("connectors", "list").splitlines()
        self.assertEqual(
            text[0].split(),
            [
                "ID",
                "GROUP",
                "HOST",
                "VERSION",
                "CONNS",
                "STREAMS",
                "LAST",
                "SEEN",
                "(UTC)",
                "SERIAL",
                "EXPIRES",
                "(UTC)",
                "STATUS",
            ],
        )
        row = text[1].split()
        self.assertEqual((row[0], row[1], row[4], row[5]), (connector["id"], "default", "3", "12"))
        self.assertEqual(row[-1], "active")

    def test_inactive(self) -> None:
        """Unseen for [connectors] inactive_after_days (default 10): inactive."""
        (connector,) = self.listed().values()
        long_ago = time.time() - 11 * 86400
        store.touch_connectors(self.connect(), [(connector["id"], long_ago, "192.0.2.7", 0, 0)])
        self.assertEqual(self.listed()[connector["id"]]["status"], "inactive")
        store.touch_connectors(
            self.connect(), [(connector["id"], time.time() - 9 * 86400, "192.0.2.7", 0, 0)]
        )
        self.assertEqual(self.listed()[connector["id"]]["status"], "active")

    def test_lifecycle(self) -> None:
        """disable, enable, revoke (final), delete: each said, stored and audited."""
        (connector_id,) = self.listed()
        out = self.ok("connectors", "disable", connector_id, "--reason", "maintenance")
        self.assertIn(f"Disabled connector {connector_id}", out)
        self.assertEqual(self.listed()[connector_id]["status"], "disabled")
        admission = store.read_admission(self.connect())
        serial = self.listed()[connector_id]["serial"]
        self.assertEqual(admission.decide(serial, connector_id), "disabled")

        self.assertIn("Enabled connector", self.ok("connectors", "enable", connector_id))
        self.assertIsNone(store.read_admission(self.connect()).decide(serial, connector_id))

        out = self.ok("connectors", "revoke", connector_id, "--reason", "host stolen")
        self.assertIn("refuses it from now on", out)
        self.assertEqual(self.listed()[connector_id]["status"], "revoked")
        err = self.fails("connectors", "enable", connector_id)
        self.assertIn(f"connector {connector_id!r} is revoked: that is final", err)
        self.assertTrue(err.startswith("appproxy: error: "))

        self.assertIn("Deleted connector", self.ok("connectors", "delete", connector_id))
        self.assertEqual(self.listed(), {})
        self.assertEqual(self.ok("connectors", "list"), "No connectors.\n")
        self.assertEqual(
            store.read_admission(self.connect()).decide(serial, connector_id), "unknown"
        )

        events = [json.loads(line) for line in self.ok("logs", "audit", "--json").splitlines()]
        self.assertEqual(
            [e["event"] for e in events], ["register", "disable", "enable", "revoke", "delete"]
        )
        self.assertEqual(events[0]["actor"], "appproxy init")
        for event in events[1:]:
            self.assertEqual(event["actor"], local_actor())
            self.assertEqual(event["connector_id"], connector_id)
        self.assertEqual(events[1]["detail"]["reason"], "maintenance")
        self.assertEqual(events[3]["detail"]["reason"], "host stolen")

    def test_unknown_connector(self) -> None:
        for verb in ("disable", "enable", "revoke", "delete"):
            err = self.fails("connectors", verb, "cn-0000000000000000")
            self.assertEqual(
                err,
                "appproxy: error: no connector 'cn-0000000000000000' ('appproxy connectors "
                "list' shows them)\n",
            )

    def test_tokens(self) -> None:
        out = self.ok(
            "connectors", "token", "create", "--group", "default", "--ttl", "2h", "--uses", "2"
        )
        token, note = out.splitlines()
        token_id = store.token_id(token)
        assert token_id is not None
        self.assertIn(f"Enrolment token {token_id} for group default: 2 uses, expires", note)
        (listed,) = map(json.loads, self.ok("connectors", "token", "list", "--json").splitlines())
        self.assertEqual(
            (listed["id"], listed["uses_left"], listed["status"]), (token_id, 2, "usable")
        )
        expires = datetime.fromisoformat(listed["expires"].replace("Z", "+00:00")).timestamp()
        self.assertLess(abs(expires - time.time() - 7200), 60)
        # The token registers (the service's consume_token), twice.
        self.assertEqual(store.consume_token(self.connect(), token, time.time()), "default")
        self.ok("connectors", "token", "revoke", token_id)
        with self.assertRaises(store.TokenRefused) as caught:
            store.consume_token(self.connect(), token, time.time())
        self.assertEqual(caught.exception.reason, "revoked")
        self.assertIn("revoked", self.ok("connectors", "token", "list"))
        err = self.fails("connectors", "token", "revoke", "00000000")
        self.assertIn("no enrolment token '00000000'", err)

        created = json.loads(
            self.ok("connectors", "token", "create", "--group", "default", "--json")
        )
        self.assertEqual((created["group"], created["uses"]), ("default", 1))
        self.assertEqual(store.token_id(created["token"]), created["id"])

        # Nowhere but in the output of 'create': not in the audit log, as text or JSON.
        audit = self.ok("logs", "audit") + self.ok("logs", "audit", "--json")
        for secret in (token, created["token"]):
            self.assertNotIn(secret.rsplit(".", 1)[1], audit)
        self.assertIn("token-create", audit)
        self.assertIn("token-revoke", audit)

    def test_token_refusals(self) -> None:
        err = self.fails("connectors", "token", "create", "--group", "nope")
        self.assertIn("--group 'nope' is no app's connector group", err)
        self.assertIn("default", err)
        for ttl in ("0m", "30", "1y", "5 m", "1.5h"):
            err = self.fails(
                "connectors", "token", "create", "--group", "default", "--ttl", ttl, code=2
            )
            self.assertIn("is not a duration", err)
        err = self.fails("connectors", "token", "create", "--group", "default", "--ttl", "31d")
        self.assertIn("30 days at most", err)
        for uses in ("0", "1001", "x"):
            self.fails(
                "connectors", "token", "create", "--group", "default", "--uses", uses, code=2
            )
        self.assertEqual(self.ok("connectors", "token", "list"), "No enrolment tokens.\n")

    def test_audit_since(self) -> None:
        (connector_id,) = self.listed()
        connection = self.connect()
        store.audit(
            connection,
            "clone-suspected",
            actor=None,
            address="198.51.100.4",
            connector_id=connector_id,
            detail={"serial": "abc", "reason": "retired"},
            now=time.time() - 3 * 86400,
        )
        lines = self.ok("logs", "audit").splitlines()
        self.assertEqual(
            lines[0].split(), ["TIME", "EVENT", "CONNECTOR", "ACTOR", "ADDRESS", "DETAIL"]
        )
        self.assertEqual([line.split()[1] for line in lines[1:]], ["clone-suspected", "register"])
        self.assertIn("198.51.100.4", lines[1])
        self.assertIn("reason=retired serial=abc", lines[1])
        recent = self.ok("logs", "audit", "--since", "1d").splitlines()
        self.assertEqual([line.split()[1] for line in recent[1:]], ["register"])
        (one,) = self.ok("logs", "audit", "--json", "--limit", "1").splitlines()
        self.assertEqual(json.loads(one)["event"], "register")
        self.assertIn("is not a date", self.fails("logs", "audit", "--since", "yesterday"))

    def test_no_database(self) -> None:
        self.database.unlink()
        self.assertIn("no state database yet", self.fails("connectors", "list"))
        self.assertIn("no state database yet", self.fails("logs", "audit"))
        self.assertIn("no state database yet", self.fails("connectors", "revoke", "x"))
        self.assertFalse(self.database.exists())
        # Making a token needs none: the database is made (mode 0600).
        self.ok("connectors", "token", "create", "--group", "default")
        self.assertEqual(self.database.stat().st_mode & 0o777, 0o600)

    def test_audit_before_migration(self) -> None:
        """A database the service has not migrated yet has no audit log (and stays as it is)."""
        import sqlite3

        from appproxy.state import schema

        self.database.unlink()
        connection = sqlite3.connect(str(self.database))
        for statement in [*schema._MIGRATIONS[0], *schema._MIGRATIONS[1]]:
            connection.execute(statement)
        connection.execute("PRAGMA user_version = 2")
        connection.commit()
        connection.close()
        self.assertEqual(self.ok("logs", "audit", "--json"), "")
        connection = sqlite3.connect(str(self.database))
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("PRAGMA user_version").fetchone(), (2,))

    def test_real_command(self) -> None:
        """The same through the C{appproxy} command, in its own process."""
        (connector_id,) = self.listed()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}

        def appproxy(*argv: str) -> str:
            result = subprocess.run(
                [sys.executable, "-m", "appproxy", *argv, *self.state],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
                timeout=60,
                check=False,
            )
            self.assertEqual((result.returncode, result.stderr), (0, ""), argv)
            return result.stdout

        self.assertIn("Revoked connector", appproxy("connectors", "revoke", connector_id))
        (line,) = appproxy("connectors", "list", "--json").splitlines()
        self.assertEqual(json.loads(line)["status"], "revoked")
        events = [json.loads(x)["event"] for x in appproxy("logs", "audit", "--json").splitlines()]
        self.assertEqual(events, ["register", "revoke"])
