"""
L{Enrolment}: what the enrolment API does for each call: registration (an
enrolment token or an administrator's ID token, and a CSR), renewal and the
configuration pull (over mutual TLS, admitted as the tunnel is), the CA and
how to register.

Each call gives a status and a message of L{appproxy.tunnel.enrolment}; a
refusal is an L{ApiError} and, for registration and renewal, an audit
event.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from cryptography import x509
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from appproxy.config import ServiceConfig
from appproxy.daemon import csr, pki
from appproxy.oidc.client import RelyingParty
from appproxy.oidc.errors import SignInError
from appproxy.state import connectors
from appproxy.trust.admin_token import (
    USED_KIND,
    NotAdministrator,
    actor_name,
    use_id,
)
from appproxy.trust.admin_verify import verify_admin
from appproxy.trust.admission import AdmissionGate
from appproxy.trust.errors import CERTIFICATE_ERRORS, Answer, Refused
from appproxy.trust.renewal import first_sight, record_renewal
from appproxy.trust.settings import app_groups, connector_settings
from appproxy.tunnel.enrolment import (
    ENROLMENT_TOKEN_PREFIX,
    ApiError,
    CaAnswer,
    CertificateAnswer,
    MessageError,
    RegisterRequest,
    RegistrationInfo,
    RenewRequest,
    decode,
)

__all__ = ["Answer", "Enrolment"]

log = Logger()


class Enrolment:
    """The enrolment API's calls for one service process."""

    def __init__(
        self,
        config: ServiceConfig,
        gate: AdmissionGate,
        clock: IReactorTime,
        relying_party: Callable[[], RelyingParty | None],
    ) -> None:
        #: Replaced on reload.
        self.config = config
        self.gate = gate
        self.clock = clock
        self.relying_party = relying_party

    @property
    def database(self) -> Any:
        return self.gate.database

    # -- without authentication

    def ca(self) -> Answer:
        return 200, CaAnswer(ca=self.config.connector_ca_pem.decode("ascii"))

    async def registration(self) -> Answer:
        config = self.config
        client_id = config.connectors.device_client_id
        rp = self.relying_party()
        device = token = None
        if client_id is not None and rp is not None:
            try:
                metadata = await rp.metadata()
            except SignInError as e:
                raise Refused(503, "provider_unavailable", e.reason) from None
            device, token = metadata.device_authorization_endpoint, metadata.token_endpoint
        return 200, RegistrationInfo(
            issuer=config.oidc.issuer if config.oidc is not None else None,
            device_authorization_endpoint=device,
            token_endpoint=token if device is not None else None,
            client_id=client_id if device is not None else None,
            scope="openid profile",
            groups=app_groups(config),
        )

    # -- registration

    async def register(self, body: bytes, address: str) -> Answer:
        actor: str | None = None
        group: str | None = None
        try:
            request: RegisterRequest = _decode(RegisterRequest, body)
            if _oversized(request.token):
                # Nothing valid is that long: answered, not audited (the disk).
                self.gate.audit.log_limited(
                    ("oversized token", address),
                    "Refused a connector registration from {peer}: its token is too long",
                    peer=address,
                )
                return Refused(400, "bad_request", "the token is too long").answer()
            ca = self._ca_key()
            _check_csr(request.csr)
            if request.token.startswith(ENROLMENT_TOKEN_PREFIX):
                token_id = connectors.token_id(request.token)
                actor = "token:(malformed)" if token_id is None else f"token:{token_id}"
                group = await self._consume(request.token)
                if request.group is not None and request.group != group:
                    raise Refused(
                        400,
                        "bad_request",
                        f"the enrolment token is for group {group!r}, not {request.group!r}",
                    )
            else:
                claims = await self._verify_admin(request.token)
                actor = actor_name(claims)
                group = request.group or "default"
                self._check_group(group)
                await self._use_once(request.token, claims)
            self._check_group(group)
            connector_id = pki.new_connector_id()
            cert_pem = self._sign(ca, request.csr, connector_id, group)
        except Refused as refused:
            # Once per address and reason (the service's own texts) a minute: a
            # flood must not fill the disk; the next entry counts those left out.
            await self.gate.audit.record_limited(
                "register-refused",
                key=(address, refused.reason),
                actor=refused.actor or actor,
                address=address,
                connector_id=None,
                detail={"reason": refused.reason, "group": group},
                message="Refused a connector registration from {peer}: {reason}",
                peer=address,
                reason=refused.reason,
            )
            return refused.answer()
        await self.database.run_interaction(
            _record,
            connector_id,
            group,
            request.host_name[:255],
            request.version[:64],
            cert_pem,
            actor,
            address,
            self.clock.seconds(),
        )
        log.info(
            "Registered connector {connector} of group {group} on {host} from {address} ({actor})",
            connector=connector_id,
            group=group,
            host=request.host_name[:255],
            address=address,
            actor=actor,
        )
        await self.gate.refresh()
        return 201, self._certificate(connector_id, group, cert_pem)

    async def _consume(self, token: str) -> str:
        try:
            group: str = await self.database.run_interaction(
                connectors.consume_token, token, self.clock.seconds()
            )
        except connectors.TokenRefused as e:
            raise Refused(401, "invalid_token", str(e), f"enrolment token {e.reason}") from None
        return group

    async def _verify_admin(self, token: str) -> dict[str, Any]:
        config = self.config
        rp = self.relying_party()
        client_id = config.connectors.device_client_id
        if rp is None or config.oidc is None or client_id is None:
            raise Refused(
                401,
                "invalid_token",
                "this service takes no sign-in for registration (no [oidc], or no"
                " [connectors] device_client_id): use an enrolment token"
                " (appproxy connectors token create --group NAME)",
            )
        try:
            return await verify_admin(token, rp, config, client_id, int(self.clock.seconds()))
        except SignInError as e:
            raise Refused(401, "invalid_token", e.reason) from None
        except NotAdministrator as e:
            raise Refused(403, "not_administrator", str(e), actor=e.actor) from None

    async def _use_once(self, token: str, claims: dict[str, Any]) -> None:
        """An administrator's ID token registers one connector: refused the second time."""
        now = int(self.clock.seconds())
        exp = claims.get("exp")
        skew = self.config.oidc.clock_skew if self.config.oidc is not None else 0
        expires = (int(exp) if isinstance(exp, int | float) else now + 3600) + skew + 1
        first: bool = await self.database.use_once(USED_KIND, use_id(token, claims), expires, now)
        if not first:
            raise Refused(
                401,
                "invalid_token",
                "this sign-in was used already: sign in again",
                "ID token used already",
                actor=actor_name(claims),
            )

    def _check_group(self, group: str) -> None:
        groups = app_groups(self.config)
        if group not in groups:
            raise Refused(
                400,
                "unknown_group",
                f"no app uses the connector group {group!r}; the groups are: "
                + (", ".join(groups) or "(none)"),
            )

    def _ca_key(self) -> pki.KeyPair:
        key = self.config.connector_ca_key_pem
        if key is None:
            raise Refused(
                503,
                "registration_disabled",
                "this service does not sign connector certificates: set [tunnel]"
                " connector_ca_key in its service.toml to the connector CA's key (ca.key)",
            )
        return pki.KeyPair(cert_pem=self.config.connector_ca_pem, key_pem=key)

    def _sign(self, ca: pki.KeyPair, csr_pem: str, connector_id: str, group: str) -> bytes:
        lifetime = datetime.timedelta(days=self.config.connectors.certificate_days)
        try:
            return csr.sign_connector_csr(
                ca, csr_pem.encode("ascii", "replace"), connector_id, group, lifetime=lifetime
            )
        except ValueError as e:
            raise Refused(400, "bad_csr", f"the certificate request is refused: {e}") from None

    def _certificate(self, connector_id: str, group: str, cert_pem: bytes) -> CertificateAnswer:
        cert = x509.load_pem_x509_certificate(cert_pem)
        return CertificateAnswer(
            connector_id=connector_id,
            group=group,
            certificate=cert_pem.decode("ascii"),
            ca=self.config.connector_ca_pem.decode("ascii"),
            not_after=cert.not_valid_after_utc.timestamp(),
        )

    # -- over mutual TLS

    def admitted(self, certificate: x509.Certificate | None, address: str, what: str) -> Any:
        """
        The admitted connector of a client certificate.

        @raise Refused: without one (401), or one the registry refuses (403,
            audited as at the tunnel).
        """
        if certificate is None:
            raise Refused(
                401,
                "certificate_required",
                f"{what} needs the connector's client certificate",
            )
        checked = self.gate.check(certificate)
        if checked is None:
            raise Refused(401, "certificate_required", "the certificate names no connector")
        if checked.refusal is not None:
            self.gate.refuse(checked, address, f"a call to {what}")
            status, error, message = CERTIFICATE_ERRORS[checked.refusal]
            raise Refused(status, error, message, checked.refusal)
        return checked

    async def renew(
        self, body: bytes, certificate: x509.Certificate | None, address: str
    ) -> Answer:
        connector_id: str | None = None
        try:
            checked = self.admitted(certificate, address, "renewal")
            await first_sight(self.gate, checked)
            connector_id, group = checked.identity.connector_id, checked.identity.group
            request: RenewRequest = _decode(RenewRequest, body)
            ca = self._ca_key()
            cert_pem = self._sign(ca, request.csr, connector_id, group)
        except Refused as refused:
            await self.gate.audit.record_limited(
                "renew-refused",
                key=(address, refused.reason),
                address=address,
                connector_id=connector_id,
                detail={"reason": refused.reason},
            )
            return refused.answer()
        try:
            await self.database.run_interaction(
                record_renewal,
                connector_id,
                checked.serial,
                cert_pem,
                address,
                self.clock.seconds(),
            )
        except connectors.ConnectorStateError as e:
            # Stopped or renewed since its certificate was checked (a race of a second).
            await self.gate.audit.record(
                "renew-refused",
                address=address,
                connector_id=connector_id,
                detail={"reason": str(e)},
            )
            return 403, ApiError(error="certificate_retired", message=str(e))
        log.info(
            "Renewed the certificate of connector {connector} (was serial {serial})",
            connector=connector_id,
            serial=checked.serial,
        )
        await self.gate.refresh()
        return 200, self._certificate(connector_id, group, cert_pem)

    async def settings(self, certificate: x509.Certificate | None, address: str) -> Answer:
        try:
            checked = self.admitted(certificate, address, "the configuration")
        except Refused as refused:
            return refused.answer()
        # A renewed certificate's first use retires the one it replaces.
        await first_sight(self.gate, checked)
        identity = checked.identity
        return 200, connector_settings(self.config, identity.connector_id, identity.group)


def _decode(kind: type[Any], body: bytes) -> Any:
    try:
        return decode(kind, body)
    except MessageError as e:
        raise Refused(400, "bad_request", f"the request is not valid: {e}") from None


#: The longest enrolment token and ID token taken (longer: 400, not audited).
MAX_ENROLMENT_TOKEN = 1024
MAX_ID_TOKEN = 16 * 1024


def _oversized(token: str) -> bool:
    if token.startswith(ENROLMENT_TOKEN_PREFIX):
        return len(token) > MAX_ENROLMENT_TOKEN
    return len(token) > MAX_ID_TOKEN


def _check_csr(csr_pem: str) -> None:
    """Check the CSR before a token is consumed: a bad one must not use it up."""
    try:
        csr.csr_public_key(csr_pem.encode("ascii", "replace"))
    except ValueError as e:
        raise Refused(400, "bad_csr", f"the certificate request is refused: {e}") from None


def _record(
    txn: Any,
    connector_id: str,
    group: str,
    host_name: str,
    version: str,
    cert_pem: bytes,
    actor: str | None,
    address: str,
    now: float,
) -> None:
    connectors.record_connector(
        txn,
        connector_id=connector_id,
        group=group,
        host_name=host_name,
        version=version,
        cert_pem=cert_pem,
        actor=actor,
        address=address,
        now=now,
    )
