"""
The service with connector trust on, for the enrolment API and admission
tests: a real L{AppProxyService} in process (real TLS on loopback, a real
SQLite state database), C{[tunnel] connector_ca_key} set, C{[oidc]} at a
L{FakeProvider} served over real TLS (it signs the administrators' ID
tokens), and a client of the enrolment API over real TLS (ALPN http/1.1,
with a client certificate or without).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from appproxy.daemon import csr
from appproxy.state.schema import BUSY_TIMEOUT_MS, DATABASE_NAME, configure_connection
from tests.deployment import DOMAIN, Deployment
from tests.fakeprovider import FakeProvider, ServedProvider, serve_tls

__all__ = ["DEVICE_CLIENT", "TUNNEL_HOST", "TrustDeployment", "start"]

TUNNEL_HOST = f"tunnel.{DOMAIN}"
DEVICE_CLIENT = "appproxy-connector"
ISSUER = "https://idp.test"


@implementer(IAgentEndpointFactory)
class _TunnelTLS:
    """Every URL to the tunnel listener on 127.0.0.1, ALPN http/1.1, a client certificate or not."""

    def __init__(self, port: int, ca_pem: bytes, client_pem: bytes | None) -> None:
        self.port = port
        self.trust = Certificate.loadPEM(ca_pem)
        self.client = PrivateCertificate.loadPEM(client_pem) if client_pem else None

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        options = optionsForClientTLS(
            TUNNEL_HOST,
            trustRoot=self.trust,
            clientCertificate=self.client,
            acceptableProtocols=[b"http/1.1"],
        )
        return wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.port))


class TrustDeployment(Deployment):
    """A L{Deployment} whose service signs connector certificates and checks admins' tokens."""

    provider: FakeProvider
    served: ServedProvider
    #: Whether the service gets the CA's key (C{[tunnel] connector_ca_key}).
    signs = True

    def write_service_config(self, public: int = 0, tunnel: int = 0) -> Path:
        path = super().write_service_config(public, tunnel)
        self._write("ca.key", self.ca.key_pem)
        self._write("client-secret", b"a-client-secret-of-some-length-0123\n")
        self._write("provider-ca.pem", self.served.ca_pem)
        text = path.read_text()
        if self.signs:
            text = text.replace(
                'connector_ca = "ca.pem"', 'connector_ca = "ca.pem"\nconnector_ca_key = "ca.key"'
            )
        text += f"""
[oidc]
issuer = "{ISSUER}"
client_id = "appproxy"
client_secret_file = "client-secret"
callback_url = "https://login.{DOMAIN}/.appproxy/callback"
provider_ca = "provider-ca.pem"
provider_address = "{self.served.address}"

[connectors]
device_client_id = "{DEVICE_CLIENT}"
config_interval = 30
connections = 3
"""
        path.write_text(text)
        return path

    @contextmanager
    def database(self) -> Iterator[sqlite3.Connection]:
        """The service's state database, blocking (as the command line opens it)."""
        connection = sqlite3.connect(
            str(self.state_dir / DATABASE_NAME), timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            configure_connection(connection)
            yield connection
        finally:
            connection.close()

    def api(self, client_pem: bytes | None = None) -> HTTPClient:
        """A client of the enrolment API (C{client_pem}: certificate and key, PEM)."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent.usingEndpointFactory(
            reactor, _TunnelTLS(self.tunnel_port, self.ca.cert_pem, client_pem), pool=pool
        )
        return HTTPClient(agent)

    @inlineCallbacks
    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        client_pem: bytes | None = None,
        data: bytes | None = None,
    ) -> Any:
        """C{(status, JSON answer)} of one call."""
        url = f"https://{TUNNEL_HOST}:{self.tunnel_port}{path}"
        if body is not None:
            data = json.dumps(body).encode()
        response = yield self.api(client_pem).request(method, url, data=data)
        content = yield treq.content(response)
        return response.code, json.loads(content) if content else None

    def new_csr(self) -> tuple[bytes, str]:
        """A new connector key and its CSR (PEM)."""
        key = csr.new_connector_key()
        return key, csr.make_csr(key).decode("ascii")


def start(
    testcase: Any, apps: list[dict[str, Any]] | None = None, *, signs: bool = True
) -> TrustDeployment:
    """The service (no connector yet) with the fake provider."""
    if apps is None:
        apps = [
            {"name": "web", "external_url": f"https://web.{DOMAIN}/"},
            {
                "name": "hr",
                "external_url": f"https://hr.{DOMAIN}/",
                "connector_group": "hr",
                "backend_timeout": "long",
            },
        ]
    provider = FakeProvider(issuer=ISSUER, client_id=DEVICE_CLIENT)
    served = serve_tls(provider, reactor)
    testcase.addCleanup(served.stop)
    deployment = TrustDeployment(testcase, apps, 5.0)
    deployment.provider, deployment.served = provider, served
    deployment.signs = signs
    deployment.start_service()
    return deployment
