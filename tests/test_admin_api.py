"""
The admin API on the real service (in process, real TLS on loopback, a real
SQLite state database, ID tokens from a provider served over real TLS):
administrators only (401 with C{WWW-Authenticate: Bearer}, 403), filters,
keyset paging that returns every event exactly once while new ones are
written, the streaming export as JSON lines and RFC 5424 lines, and the
retention purge.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Generator
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from appproxy.admin import records
from appproxy.admin.export import BATCH
from appproxy.admin.filters import Query
from appproxy.config import ConfigError, load_service_config
from appproxy.state import queries
from appproxy.state.audit import audit
from appproxy.state.signins import SignInEvent
from tests.admin_syslog_regex import check_rfc5424
from tests.deployment import DOMAIN, LoopbackTLS
from tests.fakeprovider import FakeProvider, serve_tls
from tests.signin_deployment import LOGIN, start_builtin
from tests.trust_harness import DEVICE_CLIENT, ISSUER, TrustDeployment

ADMIN = "Application Administrator"
HOST = f"admin.{DOMAIN}"


class AdminDeployment(TrustDeployment):
    """The trust deployment with C{[admin]} on a port of its own."""

    retention_days = 90

    def write_service_config(self, public: int = 0, tunnel: int = 0) -> Path:
        path = super().write_service_config(public, tunnel)
        text = path.read_text() + (
            '\n[admin]\nlisten = "tcp:0:interface=127.0.0.1"\n'
            f"\n[events]\nretention_days = {self.retention_days}\n"
        )
        path.write_text(text)
        return path

    @property
    def admin_port(self) -> int:
        assert self.service is not None and self.service.admin_port is not None
        return cast(IPv4Address, self.service.admin_port.getHost()).port

    def admin_client(self) -> HTTPClient:
        pool = HTTPConnectionPool(reactor, persistent=False)
        tls = LoopbackTLS(self.admin_port, self.ca.cert_pem)
        return HTTPClient(Agent.usingEndpointFactory(reactor, tls, pool=pool))

    def token(self, roles: list[str] | None = None) -> str:
        claims = {"roles": [ADMIN] if roles is None else roles, "preferred_username": "ada"}
        return self.provider.issue_id_token(None, claims=claims)

    @inlineCallbacks
    def get(
        self, path: str, token: str | None = "admin"
    ) -> Generator[Deferred[Any], Any, tuple[Any, bytes]]:
        headers: dict[bytes | str, bytes | str] = {}
        if token is not None:
            headers["Authorization"] = "Bearer " + (self.token() if token == "admin" else token)
        response = yield self.admin_client().get(
            f"https://{HOST}:{self.admin_port}{path}", headers=headers
        )
        body = yield treq.content(response)
        return response, body

    def sign_ins(self, count: int, start: float, **fields: Any) -> None:
        with self.database() as db:
            for n in range(count):
                event = SignInEvent(
                    **{
                        "time": start + n,
                        "user": f"user{n % 3}",
                        "app": "web",
                        "client_address": "192.0.2.7",
                        "result": "success" if n % 2 else "blocked",
                        "request_id": f"req-{n}",
                        "policy": None if n % 2 else "block-outside",
                        "detail": "" if n % 2 else "outside the office",
                        "subject": f"sub-{n}",
                        "issuer": ISSUER,
                        "user_agent": "curl/8",
                        **fields,
                    }
                )
                queries.insert_sign_in(db, event)
            db.commit()


def start_admin(testcase: TestCase, retention_days: int = 90) -> AdminDeployment:
    apps = [{"name": "web", "external_url": f"https://web.{DOMAIN}/"}]
    provider = FakeProvider(issuer=ISSUER, client_id=DEVICE_CLIENT)
    served = serve_tls(provider, reactor)
    testcase.addCleanup(served.stop)
    deployment = AdminDeployment(testcase, apps, 5.0)
    deployment.provider, deployment.served = provider, served
    deployment.retention_days = retention_days
    deployment.start_service()
    return deployment


class AuthTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.d = start_admin(self)

    @inlineCallbacks
    def test_no_token(self) -> Generator[Deferred[Any], Any, None]:
        response, body = yield self.d.get("/admin/v1/sign-ins", token=None)
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.headers.getRawHeaders("www-authenticate"), ['Bearer realm="appproxy admin"']
        )
        self.assertEqual(json.loads(body)["error"], "invalid_request")

    @inlineCallbacks
    def test_not_administrator(self) -> Generator[Deferred[Any], Any, None]:
        response, body = yield self.d.get("/admin/v1/audit", token=self.d.token(["User"]))
        self.assertEqual(response.code, 403, body)
        self.assertIn(
            'error="insufficient_scope"', response.headers.getRawHeaders("www-authenticate")[0]
        )
        self.assertIn("not an administrator", json.loads(body)["message"])

    @inlineCallbacks
    def test_other_issuer(self) -> Generator[Deferred[Any], Any, None]:
        """Another provider's token (its keys, its issuer), and a token claiming another issuer."""
        other = FakeProvider(issuer="https://other.test", client_id=DEVICE_CLIENT)
        forged = self.d.provider.issue_id_token(None, mode="wrong-iss", claims={"roles": [ADMIN]})
        for token in (other.issue_id_token(None, claims={"roles": [ADMIN]}), forged, "not.a.jwt"):
            response, body = yield self.d.get("/admin/v1/sign-ins", token=token)
            self.assertEqual(response.code, 401, body)
            self.assertIn(
                'error="invalid_token"', response.headers.getRawHeaders("www-authenticate")[0]
            )

    @inlineCallbacks
    def test_token_serves_many_calls(self) -> Generator[Deferred[Any], Any, None]:
        """Not single use: the same token answers again."""
        token = self.d.token()
        for _ in range(3):
            response, body = yield self.d.get("/admin/v1/sign-ins", token=token)
            self.assertEqual(response.code, 200, body)

    @inlineCallbacks
    def test_bad_requests(self) -> Generator[Deferred[Any], Any, None]:
        for path, status in [
            ("/admin/v1/sign-ins?limit=5000", 400),
            ("/admin/v1/sign-ins?cursor=nonsense", 400),
            ("/admin/v1/sign-ins?bogus=1", 400),
            ("/admin/v1/nothing", 404),
            ("/metrics", 404),
        ]:
            response, body = yield self.d.get(path)
            self.assertEqual(response.code, status, path)
            self.assertIn("error", json.loads(body))


class ListTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.d = start_admin(self)

    @inlineCallbacks
    def test_fields_and_filters(self) -> Generator[Deferred[Any], Any, None]:
        now = float(int(time.time()))  # whole seconds: "since" below is in RFC 3339 seconds
        self.d.sign_ins(12, now - 100)
        response, body = yield self.d.get("/admin/v1/sign-ins")
        self.assertEqual(response.code, 200, body)
        answer = json.loads(body)
        self.assertEqual(len(answer["events"]), 12)
        self.assertFalse(answer["more"])
        first = answer["events"][0]
        self.assertEqual(
            set(first),
            {
                "id", "time", "epoch", "request_id", "user", "subject", "issuer", "app",
                "client_address", "user_agent", "result", "reason", "detail", "policies",
            },
        )  # fmt: skip
        self.assertEqual(
            first["policies"], [{"name": "block-outside", "why": "outside the office"}]
        )
        self.assertEqual(
            (first["subject"], first["issuer"], first["user_agent"]), ("sub-0", ISSUER, "curl/8")
        )

        response, body = yield self.d.get("/admin/v1/sign-ins?user=user1&result=success")
        events = json.loads(body)["events"]
        self.assertEqual([e["request_id"] for e in events], ["req-1", "req-7"])
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 95))
        response, body = yield self.d.get(f"/admin/v1/sign-ins?since={since}&until={now - 92:.3f}")
        self.assertEqual(len(json.loads(body)["events"]), 3)

        with self.d.database() as db:
            audit(
                db,
                "revoke",
                actor="oidc:x",
                address="127.0.0.1",
                connector_id="cn-1",
                detail={"why": "lost"},
                now=now,
            )
            audit(
                db,
                "register",
                actor="oidc:x",
                address="127.0.0.1",
                connector_id="cn-2",
                detail={},
                now=now,
            )
        response, body = yield self.d.get("/admin/v1/audit?event=revoke")
        [event] = json.loads(body)["events"]
        self.assertEqual((event["connector_id"], event["detail"]), ("cn-1", {"why": "lost"}))

    @inlineCallbacks
    def test_paging_exactly_once_while_writing(self) -> Generator[Deferred[Any], Any, None]:
        """
        Pages of 37, 5 events written between pages, and the retention purge
        deleting 100 events already seen after the third page: each event
        seen once, in order, none of those still there missed (an offset
        would skip some after the purge).
        """
        assert self.d.service is not None
        retention = self.d.service.admin.retention
        retention.retention_days = 30
        yield retention.purge()  # after the purge at start (one connection: calls in order)
        self.d.sign_ins(100, time.time() - 40 * 86400)
        self.d.sign_ins(100, time.time() - 1000)
        seen: list[str] = []
        path = "/admin/v1/sign-ins?limit=37"
        for page in range(100):
            response, body = yield self.d.get(path)
            self.assertEqual(response.code, 200, body)
            answer = json.loads(body)
            seen += [e["id"] for e in answer["events"]]
            if page < 8:
                self.d.sign_ins(5, time.time(), user="late")
            if page == 2:
                self.assertEqual((yield retention.purge()), 100)
            if not answer["more"] and page >= 8:
                break
            path = f"/admin/v1/sign-ins?limit=37&cursor={answer['next']}"
        with self.d.database() as db:
            left = [str(row[0]) for row in db.execute("SELECT id FROM sign_ins ORDER BY id")]
        self.assertEqual(len(left), 140)
        self.assertEqual(seen, [str(n) for n in range(1, 112)] + left[11:])
        self.assertEqual(len(seen), len(set(seen)))


class ExportTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.d = start_admin(self)

    @inlineCallbacks
    def test_jsonl(self) -> Generator[Deferred[Any], Any, None]:
        count = BATCH * 2 + 17
        start = time.time() - 5000
        self.d.sign_ins(count, start)
        response, body = yield self.d.get("/admin/v1/sign-ins/export?format=jsonl")
        self.assertEqual(response.code, 200, body[:200])
        self.assertEqual(response.length, UNKNOWN_LENGTH)  # chunked: streamed, not one body
        lines = body.decode("utf-8").splitlines()
        self.assertEqual(len(lines), count)
        ids = [int(json.loads(line)["id"]) for line in lines]
        self.assertEqual(ids, sorted(set(ids)))

        since = start + count - 10.5
        response, body = yield self.d.get(f"/admin/v1/sign-ins/export?since={since:.3f}")
        self.assertEqual(len(body.decode().splitlines()), 10)

    @inlineCallbacks
    def test_syslog(self) -> Generator[Deferred[Any], Any, None]:
        self.d.sign_ins(30, time.time() - 100, user='eve "] \\ \u00e9')
        with self.d.database() as db:
            audit(
                db,
                "register-refused",
                actor=None,
                address="::1",
                connector_id=None,
                detail={"reason": "x]"},
                now=time.time(),
            )
        for kind, count in (("sign-ins", 30), ("audit", 1)):
            response, body = yield self.d.get(f"/admin/v1/{kind}/export?format=syslog")
            self.assertEqual(response.code, 200)
            lines = body.decode("utf-8").splitlines(keepends=True)
            self.assertEqual(len(lines), count)
            msgids = [check_rfc5424(line)["msgid"] for line in lines]
            self.assertEqual(len(set(msgids)), count)

    @inlineCallbacks
    def test_curl(self) -> Generator[Deferred[Any], Any, None]:
        """The documented curl call: syslog export, then a page with a cursor."""
        self.d.sign_ins(3, time.time() - 100)
        (self.d.root / "admin-ca.pem").write_bytes(self.d.ca.cert_pem)
        base = f"https://{HOST}:{self.d.admin_port}/admin/v1"
        common = [
            "-sS",
            "--fail-with-body",
            "--max-time",
            "20",
            "--resolve",
            f"{HOST}:{self.d.admin_port}:127.0.0.1",
            "--cacert",
            str(self.d.root / "admin-ca.pem"),
            "-H",
            f"Authorization: Bearer {self.d.token()}",
        ]
        out, err, code = yield getProcessOutputAndValue(
            "curl", [*common, f"{base}/sign-ins/export?format=syslog"], reactor=reactor
        )
        self.assertEqual(code, 0, err)
        lines = out.decode("utf-8").splitlines(keepends=True)
        self.assertEqual(
            [check_rfc5424(line)["msgid"] for line in lines],
            ["sign-in-1", "sign-in-2", "sign-in-3"],
        )
        out, err, code = yield getProcessOutputAndValue(
            "curl", [*common, f"{base}/sign-ins?limit=2"], reactor=reactor
        )
        self.assertEqual(code, 0, err)
        cursor = json.loads(out)["next"]
        out, err, code = yield getProcessOutputAndValue(
            "curl", [*common, f"{base}/sign-ins?limit=2&cursor={cursor}"], reactor=reactor
        )
        self.assertEqual([e["id"] for e in json.loads(out)["events"]], ["3"])

    @inlineCallbacks
    def test_back_pressure(self) -> Generator[Deferred[Any], Any, None]:
        """
        A client that stops reading stops the export reading the database
        (bounded memory); when it reads again, every event arrives.
        """
        count = BATCH * 120  # about 20 MB of JSON lines: more than the sockets hold
        self.d.sign_ins(count, time.time() - 100_000, detail="x" * 150)
        assert self.d.service is not None
        resource = self.d.service.admin.resource
        reads: list[int] = []
        database = resource.database

        class Counting:
            def run_interaction(self, interaction: Any, *args: Any) -> Any:
                if interaction is records.select_events:
                    reads.append(1)
                return database.run_interaction(interaction, *args)

        resource.database = Counting()
        self.addCleanup(setattr, resource, "database", database)
        client = _SlowReader(self.d.token())
        options = optionsForClientTLS(HOST, trustRoot=Certificate.loadPEM(self.d.ca.cert_pem))
        endpoint = wrapClientTLS(
            options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.d.admin_port)
        )
        yield connectProtocol(endpoint, client)
        yield client.first
        # Paused: the reads stop well short of the whole export.
        stable = 0
        for _ in range(500):
            before = len(reads)
            yield deferLater(reactor, 0.02, lambda: None)
            stable = stable + 1 if len(reads) == before else 0
            if stable >= 15:
                break
        self.assertGreaterEqual(stable, 15, "the export kept reading while the client did not")
        self.assertLess(len(reads), 100)
        client.transport.resumeProducing()  # type: ignore[union-attr]
        yield client.done
        self.assertEqual(client.events, count)
        self.assertIn(len(reads), (120, 121))  # and perhaps one that finds no more

    @inlineCallbacks
    def test_refused_without_token(self) -> Generator[Deferred[Any], Any, None]:
        response, _ = yield self.d.get("/admin/v1/audit/export", token=None)
        self.assertEqual(response.code, 401)


class _SlowReader(Protocol):
    """Asks for an export, then stops reading after the first bytes until resumed."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.events = 0
        self._tail = b""
        self.first: Deferred[None] = Deferred()
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(  # type: ignore[union-attr]
            f"GET /admin/v1/sign-ins/export HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Authorization: Bearer {self.token}\r\nConnection: close\r\n\r\n".encode()
        )

    def dataReceived(self, data: bytes) -> None:
        # Count events as they come (a marker may straddle two reads).
        joined = self._tail + data
        self.events += joined.count(b'{"id":"')
        self._tail = data[-6:]
        if not self.first.called:
            self.transport.pauseProducing()  # type: ignore[union-attr]
            self.first.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(None)


class RetentionTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_purge(self) -> Generator[Deferred[Any], Any, None]:
        d = start_admin(self, retention_days=7)
        assert d.service is not None
        # The purge at start (the pool runs its one connection's calls in order).
        yield d.service.admin.retention.purge()
        now = time.time()
        d.sign_ins(5, now - 30 * 86400)
        d.sign_ins(3, now - 3600)
        with d.database() as db:
            audit(
                db,
                "revoke",
                actor=None,
                address=None,
                connector_id="old",
                detail={},
                now=now - 8 * 86400,
            )
            audit(db, "revoke", actor=None, address=None, connector_id="new", detail={}, now=now)
        assert d.service is not None
        deleted = yield d.service.admin.retention.purge()
        self.assertEqual(deleted, 6)
        with d.database() as db:
            self.assertEqual(db.execute("SELECT count(*) FROM sign_ins").fetchone(), (3,))
            self.assertEqual(db.execute("SELECT connector_id FROM audit").fetchall(), [("new",)])

    @inlineCallbacks
    def test_newest_kept(self) -> Generator[Deferred[Any], Any, None]:
        """All old: the newest row stays, so the next id is never one a cursor has passed."""
        d = start_admin(self, retention_days=1)
        assert d.service is not None
        yield d.service.admin.retention.purge()
        d.sign_ins(4, time.time() - 10 * 86400)
        assert d.service is not None
        yield d.service.admin.retention.purge()
        d.sign_ins(1, time.time())
        with d.database() as db:
            self.assertEqual(
                db.execute("SELECT id FROM sign_ins ORDER BY id").fetchall(), [(4,), (5,)]
            )


class ConfigTests(TestCase):
    def test_refusals(self) -> None:
        d = AdminDeployment(self, [{"name": "web", "external_url": f"https://web.{DOMAIN}/"}], 5.0)
        d.served = serve_tls(FakeProvider(issuer=ISSUER, client_id=DEVICE_CLIENT), reactor)
        self.addCleanup(d.served.stop)
        path = d.write_service_config(public=8443)
        base = path.read_text().split("\n[admin]\n")[0]
        config = load_service_config(path)
        self.assertEqual((config.admin.cert, config.events.retention_days), (None, 90))
        for admin, key in [
            ('listen = "tcp:8443:interface=127.0.0.1"', "admin.listen"),
            ('listen = "tcp:8443"', "admin.listen"),
            ('listen = "tcp:9000"\ncert = "web.pem"', "admin.key"),
            ('cert = "web.pem"\nkey = "web.key"', "admin.cert"),
            ('listen = "ssl:9000"', "admin.listen"),
            ('listen = "tcp:9000"\n[events]\nretention_days = 0', "events.retention_days"),
        ]:
            path.write_text(f"{base}\n[admin]\n{admin}\n")
            with self.assertRaises(ConfigError, msg=key) as caught:
                load_service_config(path)
            self.assertIn(key, str(caught.exception))
        path.write_text(base)
        self.assertIsNone(load_service_config(path).admin.listen)


class _UserAgent:
    """An agent that sends a C{User-Agent}, as a browser does."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def request(self, method: bytes, uri: bytes, headers: Any = None, body: Any = None) -> Any:
        headers = headers if headers is not None else Headers()
        headers.setRawHeaders(b"user-agent", [b"SecurityTool/1.0 (test)"])
        return self.agent.request(method, uri, headers, body)


class SignInFieldsTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_real_sign_in_has_subject_issuer_agent(self) -> Generator[Deferred[Any], Any, None]:
        """A real sign-in (built-in provider) records sub, iss and the browser's User-Agent."""
        d = yield start_builtin(self)
        browser = d.browser()
        browser.agent = _UserAgent(browser.agent)
        page = yield browser.go(f"https://web.{DOMAIN}/")
        page = yield browser.submit(page, {"username": "alice", "password": "correct horse"})
        self.assertEqual(page.status, 200)
        with closing(sqlite3.connect(str(d.state / "appproxy.sqlite"))) as db:
            query = Query(kind="sign-ins", equal=(("result", "success"),))
            [event] = records.select_events(db.cursor(), query, 10)
        self.assertEqual(event["user"], "alice")
        self.assertEqual(event["issuer"], f"https://{LOGIN}")
        self.assertTrue(event["subject"])
        self.assertEqual(event["user_agent"], "SecurityTool/1.0 (test)")
