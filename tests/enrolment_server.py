"""
A small real HTTPS server that speaks the enrolment API's contract
(L{appproxy.tunnel.enrolment}), for the connector's own tests: real TLS on
loopback (the service's certificate from a real CA, client certificates
verified when presented, ALPN C{http/1.1}), real CSRs signed with
L{appproxy.daemon.csr.sign_connector_csr}.  It also plays a tiny OpenID
provider's device flow (C{/device_authorization}, C{/token}) with a script
of answers, so the connector's RFC 8628 polling can be checked.

Not the service: the service's own side is tested with the real daemon.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import attrs
from cryptography import x509
from OpenSSL import crypto
from twisted.internet import reactor as global_reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.ssl import CertificateOptions
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from appproxy.daemon import pki
from appproxy.daemon.csr import CSRError, sign_connector_csr
from appproxy.tunnel.enrolment import (
    ApiError,
    AppSettings,
    CaAnswer,
    CertificateAnswer,
    ConnectorSettings,
    MessageError,
    RegisterRequest,
    RegistrationInfo,
    RenewRequest,
    decode,
    encode,
)

SERVICE_HOST = "tunnel.test"
GOOD_TOKEN = "appproxy-enrol.0123abcd.secret"
ID_TOKEN = "header.payload.signature"


@attrs.define
class Calls:
    """What the server saw, for the tests' assertions."""

    paths: list[str] = attrs.field(factory=list)
    registered: list[RegisterRequest] = attrs.field(factory=list)
    polls: list[float] = attrs.field(factory=list)
    config_serials: list[str] = attrs.field(factory=list)
    retired: set[str] = attrs.field(factory=set)


@attrs.define(eq=False)
class FakeService:
    """State of the test server: its CA, what it answers, what it saw."""

    ca: pki.KeyPair
    group: str = "default"
    apps: tuple[AppSettings, ...] = ()
    lifetime: datetime.timedelta = datetime.timedelta(days=30)
    renew_after: float = 180 * 86400.0
    config_interval: float = 120.0
    connections: int | None = None
    #: The device flow's answers to successive token polls (then success).
    device_script: list[str] = attrs.field(factory=list)
    device_interval: float = 1.0
    device_offered: bool = True
    calls: Calls = attrs.field(factory=Calls)
    port: int = 0

    def settings(self, connector_id: str) -> ConnectorSettings:
        return ConnectorSettings(
            connector_id=connector_id,
            group=self.group,
            apps=self.apps,
            connections=self.connections,
            config_interval=self.config_interval,
            renew_after=self.renew_after,
            version=str(hash((self.apps, self.connections, self.renew_after))),
        )


def _error(request: Request, status: int, code: str, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return encode(ApiError(code, message))


def _json(request: Request, status: int, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return body


def _peer(request: Request) -> x509.Certificate | None:
    transport: Any = request.channel.transport
    peer = transport.getPeerCertificate()
    return None if peer is None else peer.to_cryptography()


class _Api(Resource):
    isLeaf = True

    def __init__(self, state: FakeService) -> None:
        super().__init__()
        self.state = state

    def render(self, request: Request) -> bytes:
        state = self.state
        path = request.path.decode()
        state.calls.paths.append(path)
        body = request.content.read() if request.content is not None else b""
        alpn = request.channel.transport.negotiatedProtocol  # type: ignore[union-attr]
        if not path.startswith(("/device", "/token")) and alpn != b"http/1.1":
            # The service tells the API from the tunnel by ALPN alone.
            return _error(request, 421, "bad_request", f"ALPN {alpn!r}, not http/1.1")
        if path == "/v1/ca":
            return _json(request, 200, encode(CaAnswer(state.ca.cert_pem.decode())))
        if path == "/v1/registration":
            base = f"https://localhost:{state.port}"
            offered = state.device_offered
            info = RegistrationInfo(
                issuer=base if offered else None,
                device_authorization_endpoint=f"{base}/device_authorization" if offered else None,
                token_endpoint=f"{base}/token" if offered else None,
                client_id="appproxy-connector" if offered else None,
                scope="openid profile",
                groups=(state.group,),
            )
            return _json(request, 200, encode(info))
        if path == "/v1/register":
            try:
                message: RegisterRequest = decode(RegisterRequest, body)
            except MessageError as e:
                return _error(request, 400, "bad_request", str(e))
            state.calls.registered.append(message)
            if message.token not in (GOOD_TOKEN, ID_TOKEN):
                return _error(request, 401, "invalid_token", "the enrolment token is unknown")
            return self._sign(request, message.csr, pki.new_connector_id(), 201)
        if path in ("/v1/renew", "/v1/config"):
            peer = _peer(request)
            if peer is None:
                return _error(request, 401, "certificate_required", "present a certificate")
            serial = pki.certificate_serial(peer)
            if serial in state.calls.retired:
                return _error(request, 403, "certificate_retired", "a retired certificate")
            identity = pki.connector_identity(peer)
            if path == "/v1/config":
                state.calls.config_serials.append(serial)
                return _json(request, 200, encode(state.settings(identity.connector_id)))
            try:
                renew: RenewRequest = decode(RenewRequest, body)
            except MessageError as e:
                return _error(request, 400, "bad_request", str(e))
            answer = self._sign(request, renew.csr, identity.connector_id, 200)
            if request.code == 200:
                state.calls.retired.add(serial)  # as the service does: renewal retires it
            return answer
        if path == "/device_authorization":
            form = parse_qs(body.decode())
            if form.get("client_id") != ["appproxy-connector"]:
                return _json(request, 401, b'{"error":"invalid_client"}')
            start = {
                "device_code": "dev-code",
                "user_code": "BCDF-GHJK",
                "verification_uri": f"https://localhost:{state.port}/device",
                "expires_in": 600,
                "interval": state.device_interval,
            }
            return _json(request, 200, json.dumps(start).encode())
        if path == "/token":
            form = parse_qs(body.decode())
            state.calls.polls.append(time.monotonic())
            if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:device_code"]:
                return _json(request, 400, b'{"error":"unsupported_grant_type"}')
            if state.device_script:
                error = state.device_script.pop(0)
                return _json(request, 400, json.dumps({"error": error}).encode())
            return _json(request, 200, json.dumps({"id_token": ID_TOKEN}).encode())
        return _error(request, 404, "not_found", "no such path")

    def _sign(self, request: Request, csr: str, connector_id: str, status: int) -> bytes:
        state = self.state
        try:
            cert = sign_connector_csr(
                state.ca, csr.encode(), connector_id, state.group, lifetime=state.lifetime
            )
        except (CSRError, ValueError) as e:
            return _error(request, 400, "bad_csr", str(e))
        not_after = x509.load_pem_x509_certificate(cert).not_valid_after_utc.timestamp()
        answer = CertificateAnswer(
            connector_id=connector_id,
            group=state.group,
            certificate=cert.decode(),
            ca=state.ca.cert_pem.decode(),
            not_after=not_after,
        )
        return _json(request, status, encode(answer))


def start_server(
    state: FakeService,
    add_cleanup: Callable[..., Any],
    reactor: Any = global_reactor,
) -> IListeningPort:
    """
    Listen on 127.0.0.1 (a free port, in C{state.port}) with TLS for
    L{SERVICE_HOST} (the service, dialled at 127.0.0.1) and C{localhost}
    (the provider's endpoints).
    """
    server = pki.issue_server_certificate(state.ca, [SERVICE_HOST, "localhost"])
    options = CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(_load_key(server.key_pem)),
        certificate=crypto.X509.from_cryptography(x509.load_pem_x509_certificate(server.cert_pem)),
        verify=True,
        requireCertificate=False,
        caCerts=[crypto.X509.from_cryptography(x509.load_pem_x509_certificate(state.ca.cert_pem))],
        acceptableProtocols=[b"http/1.1"],
    )
    site = Site(_Api(state))
    site.displayTracebacks = False
    port: IListeningPort = reactor.listenSSL(0, site, options, interface="127.0.0.1")
    state.port = port.getHost().port  # type: ignore[attr-defined]
    add_cleanup(port.stopListening)
    return port


def _load_key(key_pem: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(key_pem, password=None)
