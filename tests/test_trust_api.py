"""
The enrolment API on the real service's tunnel listener, over real TLS
(ALPN http/1.1) with a real SQLite state database: registration with an
enrolment token or an administrator's ID token (from a provider served over
real TLS), every refusal answered with the right L{ApiError} and audited;
renewal over mutual TLS retiring the old serial; the configuration pull.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from appproxy.daemon import pki
from appproxy.state import connectors
from appproxy.tunnel.enrolment import MAX_BODY, CertificateAnswer, ConnectorSettings
from tests.trust_harness import DEVICE_CLIENT, TrustDeployment, start

ADMIN = "Application Administrator"


def _events(d: TrustDeployment, event: str) -> list[connectors.AuditEvent]:
    with d.database() as db:
        return [e for e in connectors.read_audit(db, since=None, limit=1000) if e.event == event]


@inlineCallbacks
def wait_for_events(
    d: TrustDeployment, event: str, count: int = 1
) -> Generator[Deferred[Any], Any, list[connectors.AuditEvent]]:
    """The audit events C{event}, once there are C{count} (written off the answer's path)."""
    for _ in range(250):
        found = _events(d, event)
        if len(found) >= count:
            return found
        yield deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"no {count} {event} audit events within 5 s: {_events(d, event)}")


class _Base(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.d = start(self)

    def token(self, group: str = "default", ttl: float = 600, uses: int = 1, now: float = 0) -> str:
        with self.d.database() as db:
            return connectors.create_token(
                db, group=group, ttl=ttl, uses=uses, actor="tests", now=now or time.time()
            )

    def register(self, token: str, group: str | None = None) -> Deferred[Any]:
        key, request = self.d.new_csr()
        self.key = key
        body: dict[str, Any] = {
            "token": token,
            "csr": request,
            "host_name": "host-1",
            "version": "1.0",
        }
        if group is not None:
            body["group"] = group
        result: Deferred[Any] = self.d.call("POST", "/v1/register", body)
        return result

    def id_token(self, mode: str = "good", **claims: Any) -> str:
        return self.d.provider.issue_id_token(None, mode=mode, claims={"roles": [ADMIN], **claims})


class RegisterTests(_Base):
    @inlineCallbacks
    def test_ca(self) -> Generator[Deferred[Any], Any, None]:
        status, answer = yield self.d.call("GET", "/v1/ca")
        self.assertEqual(status, 200)
        self.assertEqual(answer["ca"].encode(), self.d.ca.cert_pem)

    @inlineCallbacks
    def test_enrolment_token(self) -> Generator[Deferred[Any], Any, None]:
        """A token registers once: the certificate names the service's id and the token's group."""
        token = self.token(group="hr")
        status, answer = yield self.register(token)
        self.assertEqual(status, 201, answer)
        issued = CertificateAnswer.from_json(answer)
        self.assertEqual(issued.group, "hr")
        self.assertRegex(issued.connector_id, r"^cn-[0-9a-f]{16}$")
        cert = x509.load_pem_x509_certificate(issued.certificate.encode())
        self.assertEqual(
            pki.connector_identity(cert),
            pki.ConnectorIdentity(connector_id=issued.connector_id, group="hr"),
        )
        with self.d.database() as db:
            record = connectors.get_connector(db, issued.connector_id)
        assert record is not None
        self.assertEqual((record.host_name, record.state), ("host-1", "enabled"))
        self.assertEqual(record.serial, pki.certificate_serial(cert))
        [event] = _events(self.d, "register")
        self.assertEqual(event.actor, "token:" + token.split(".")[1])
        self.assertEqual(event.address, "127.0.0.1")

        # Used up now: refused, and audited.
        status, answer = yield self.register(token)
        self.assertEqual((status, answer["error"]), (401, "invalid_token"))
        self.assertIn("used up", answer["message"])
        [refused] = _events(self.d, "register-refused")
        self.assertEqual(refused.detail["reason"], "enrolment token used up")

    @inlineCallbacks
    def test_token_refusals(self) -> Generator[Deferred[Any], Any, None]:
        expired = self.token(ttl=60, now=time.time() - 3600)
        unknown = expired[:-4] + ("AAAA" if not expired.endswith("AAAA") else "BBBB")
        for token in (expired, unknown):
            status, answer = yield self.register(token)
            self.assertEqual((status, answer["error"]), (401, "invalid_token"), token)
        reasons = [e.detail["reason"] for e in _events(self.d, "register-refused")]
        self.assertEqual(reasons, ["enrolment token expired", "enrolment token unknown"])

    @inlineCallbacks
    def test_group_checks(self) -> Generator[Deferred[Any], Any, None]:
        """A request naming another group than the token's, or a group no app uses: 400."""
        status, answer = yield self.register(self.token(group="hr"), group="default")
        self.assertEqual((status, answer["error"]), (400, "bad_request"))
        status, answer = yield self.register(self.token(group="nobody"))
        self.assertEqual((status, answer["error"]), (400, "unknown_group"))
        self.assertIn("default, hr", answer["message"])

    @inlineCallbacks
    def test_bad_csr_keeps_the_token(self) -> Generator[Deferred[Any], Any, None]:
        token = self.token()
        body = {"token": token, "csr": "junk", "host_name": "h", "version": "1"}
        status, answer = yield self.d.call("POST", "/v1/register", body)
        self.assertEqual((status, answer["error"]), (400, "bad_csr"))
        status, _ = yield self.register(token)
        self.assertEqual(status, 201)

    @inlineCallbacks
    def test_administrator_id_token(self) -> Generator[Deferred[Any], Any, None]:
        status, answer = yield self.register(self.id_token(), group="hr")
        self.assertEqual(status, 201, answer)
        self.assertEqual(answer["group"], "hr")
        [event] = _events(self.d, "register")
        self.assertEqual(event.actor, "oidc:248289761001 (alice)")

    @inlineCallbacks
    def test_id_token_refusals(self) -> Generator[Deferred[Any], Any, None]:
        """Another issuer, expired, another audience, a bad signature: 401; not an admin: 403."""
        for mode in ("wrong-iss", "expired", "wrong-aud", "bad-signature", "alg-none"):
            status, answer = yield self.register(self.id_token(mode))
            self.assertEqual((status, answer["error"]), (401, "invalid_token"), mode)
        status, answer = yield self.register(self.id_token(roles=["Reader"]))
        self.assertEqual((status, answer["error"]), (403, "not_administrator"))
        self.assertEqual(
            answer["message"],
            "oidc:248289761001 (alice) is not an administrator: the 'roles' claim must contain"
            " 'Application Administrator'",
        )
        # A token for the service's own client (sign-in), not the device flow's:
        # refused as wrong-aud was, so not audited again within the minute.
        status, answer = yield self.register(self.id_token(aud="appproxy"))
        self.assertEqual(status, 401)
        refused = _events(self.d, "register-refused")
        self.assertEqual(len(refused), 6)
        self.assertEqual(refused[5].actor, "oidc:248289761001 (alice)")
        self.assertEqual(_events(self.d, "register"), [])

    @inlineCallbacks
    def test_id_token_single_use(self) -> Generator[Deferred[Any], Any, None]:
        """One sign-in registers one connector; a token with a jti seen already is refused."""
        token = self.id_token()
        status, answer = yield self.register(token)
        self.assertEqual(status, 201, answer)
        status, answer = yield self.register(token)
        self.assertEqual((status, answer["error"]), (401, "invalid_token"))
        self.assertEqual(answer["message"], "this sign-in was used already: sign in again")
        status, answer = yield self.register(self.id_token(jti="j-1"))
        self.assertEqual(status, 201, answer)
        status, answer = yield self.register(self.id_token(jti="j-1", preferred_username="x"))
        self.assertEqual((status, answer["error"]), (401, "invalid_token"))
        self.assertEqual(len(_events(self.d, "register")), 2)
        [refused] = _events(self.d, "register-refused")  # the second: the same reason
        self.assertEqual(refused.actor, "oidc:248289761001 (alice)")
        self.assertEqual(refused.detail["reason"], "ID token used already")
        # An unknown group does not use the sign-in up.
        fresh = self.id_token(jti="j-2")
        status, answer = yield self.register(fresh, group="nobody")
        self.assertEqual((status, answer["error"]), (400, "unknown_group"))
        status, answer = yield self.register(fresh)
        self.assertEqual(status, 201, answer)

    @inlineCallbacks
    def test_id_token_too_old(self) -> Generator[Deferred[Any], Any, None]:
        """A device flow's token is fresh: one issued 15 minutes ago is refused."""
        status, answer = yield self.register(self.id_token(iat=int(time.time()) - 900))
        self.assertEqual((status, answer["error"]), (401, "invalid_token"))
        self.assertIn("issued over 10 minutes ago", answer["message"])

    @inlineCallbacks
    def test_registration_info(self) -> Generator[Deferred[Any], Any, None]:
        self.d.provider.metadata_overrides["device_authorization_endpoint"] = (
            "https://idp.test/device"
        )
        status, answer = yield self.d.call("GET", "/v1/registration")
        self.assertEqual(status, 200, answer)
        self.assertEqual(answer["client_id"], DEVICE_CLIENT)
        self.assertEqual(answer["device_authorization_endpoint"], "https://idp.test/device")
        self.assertEqual(answer["token_endpoint"], "https://idp.test/token")
        self.assertEqual(answer["groups"], ["default", "hr"])

    @inlineCallbacks
    def test_not_found_and_too_large(self) -> Generator[Deferred[Any], Any, None]:
        status, answer = yield self.d.call("GET", "/v1/other")
        self.assertEqual((status, answer["error"]), (404, "not_found"))
        status, answer = yield self.d.call("GET", "/v1/register")
        self.assertEqual((status, answer["error"]), (405, "method_not_allowed"))
        status, answer = yield self.d.call("POST", "/v1/register", data=b"x" * (MAX_BODY + 1))
        self.assertEqual((status, answer["error"]), (413, "too_large"))


class MutualTLSTests(_Base):
    @inlineCallbacks
    def registered(self, group: str = "default") -> Generator[Deferred[Any], Any, Any]:
        status, answer = yield self.register(self.token(group=group))
        self.assertEqual(status, 201)
        return CertificateAnswer.from_json(answer), answer["certificate"].encode() + self.key

    @inlineCallbacks
    def test_config(self) -> Generator[Deferred[Any], Any, None]:
        issued, pem = yield self.registered("hr")
        status, answer = yield self.d.call("GET", "/v1/config", client_pem=pem)
        self.assertEqual(status, 200, answer)
        settings = ConnectorSettings.from_json(answer)
        self.assertEqual((settings.connector_id, settings.group), (issued.connector_id, "hr"))
        self.assertEqual([app.name for app in settings.apps], ["hr"])
        self.assertEqual(settings.apps[0].internal_url, self.d.backend_url)
        self.assertEqual(settings.apps[0].timeout, 180.0)
        self.assertEqual((settings.connections, settings.config_interval), (3, 30.0))
        self.assertEqual(settings.renew_after, 180 * 86400.0)
        status, answer = yield self.d.call("GET", "/v1/config")
        self.assertEqual((status, answer["error"]), (401, "certificate_required"))

    @inlineCallbacks
    def test_renew(self) -> Generator[Deferred[Any], Any, None]:
        """
        Renewal needs the client certificate; the old serial retires at the
        new one's first use, then the old one is refused.
        """
        issued, old_pem = yield self.registered()
        key, request = self.d.new_csr()
        status, answer = yield self.d.call("POST", "/v1/renew", {"csr": request})
        self.assertEqual((status, answer["error"]), (401, "certificate_required"))
        status, answer = yield self.d.call(
            "POST", "/v1/renew", {"csr": request}, client_pem=old_pem
        )
        self.assertEqual(status, 200, answer)
        renewed = CertificateAnswer.from_json(answer)
        self.assertEqual(renewed.connector_id, issued.connector_id)
        old_serial = pki.certificate_serial(issued.certificate.encode())
        new_serial = pki.certificate_serial(renewed.certificate.encode())
        with self.d.database() as db:
            admission = connectors.read_admission(db)
        self.assertIn(old_serial, admission.current)
        self.assertIn(new_serial, admission.current)
        self.assertEqual(admission.pending, {new_serial})
        self.assertEqual(len(_events(self.d, "renew")), 1)

        new_pem = renewed.certificate.encode() + key
        status, _ = yield self.d.call("GET", "/v1/config", client_pem=new_pem)
        self.assertEqual(status, 200)
        with self.d.database() as db:
            admission = connectors.read_admission(db)
        self.assertIn(old_serial, admission.retired)
        self.assertEqual(admission.pending, frozenset())
        status, answer = yield self.d.call("GET", "/v1/config", client_pem=old_pem)
        self.assertEqual((status, answer["error"]), (403, "certificate_retired"))
        [suspected] = yield wait_for_events(self.d, "clone-suspected")
        self.assertEqual(suspected.connector_id, issued.connector_id)
        self.assertEqual(suspected.detail["serial"], old_serial)

    @inlineCallbacks
    def test_disabled_connector(self) -> Generator[Deferred[Any], Any, None]:
        issued, pem = yield self.registered()
        with self.d.database() as db:
            connectors.set_connector_state(
                db, issued.connector_id, "disabled", actor="tests", reason="test", now=time.time()
            )
        assert self.d.service is not None
        yield self.d.service.refresh_admission()
        status, answer = yield self.d.call("GET", "/v1/config", client_pem=pem)
        self.assertEqual((status, answer["error"]), (403, "connector_disabled"))
        _, request = self.d.new_csr()
        status, answer = yield self.d.call("POST", "/v1/renew", {"csr": request}, client_pem=pem)
        self.assertEqual((status, answer["error"]), (403, "connector_disabled"))
        self.assertEqual(len(_events(self.d, "renew-refused")), 1)


class WithoutCAKeyTests(_Base):
    def setUp(self) -> None:
        self.d = start(self, signs=False)

    @inlineCallbacks
    def test_registration_disabled(self) -> Generator[Deferred[Any], Any, None]:
        """Without [tunnel] connector_ca_key: 503 naming the key to set; the token is kept."""
        token = self.token()
        status, answer = yield self.register(token)
        self.assertEqual((status, answer["error"]), (503, "registration_disabled"))
        self.assertIn("connector_ca_key", answer["message"])
        with self.d.database() as db:
            [record] = connectors.list_tokens(db)
        self.assertEqual(record.uses_left, 1)
