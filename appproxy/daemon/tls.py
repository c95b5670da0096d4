"""
TLS glue between appproxy's PEM files and Twisted/pyOpenSSL.

  - L{SNIServerContextFactory}: the public HTTPS listener; one certificate per
    SNI host name, ALPN (h2, http/1.1) on each.
  - L{tunnel_server_context} / L{tunnel_client_options}: the mutual TLS tunnel
    between service and connectors (h2, TLS 1.2+); the listener also speaks
    http/1.1 for the enrolment API, where a client certificate is optional.
  - L{peer_connector_identity} / L{negotiated_protocol}: what a handshake
    established, read from a C{TLSMemoryBIOProtocol} transport.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
)
from twisted.logger import Logger
from zope.interface import implementer

from appproxy.daemon import pki
from appproxy.daemon.tls_failures import RefusalLog, RefusedHook, log_refused_certificates

__all__ = [
    "TUNNEL_LISTENER_PROTOCOLS",
    "SNIServerContextFactory",
    "negotiated_protocol",
    "peer_connector_identity",
    "service_trust_root",
    "tunnel_client_options",
    "tunnel_server_context",
]

#: The tunnel listener's ALPN protocols: the tunnel, then the enrolment API.
TUNNEL_LISTENER_PROTOCOLS = (b"h2", b"http/1.1")

#: The service's log of refused connector certificates: one per service
#: process, so its rate limit holds across reloads.
TUNNEL_REFUSALS = RefusalLog(Logger(namespace="appproxy.daemon.tls"))


def _load_chain(cert_pem: bytes, key_pem: bytes) -> tuple[list[x509.Certificate], Any]:
    """
    Parse a PEM certificate chain (leaf first) and its private key, checking
    that the key belongs to the leaf.

    @raise ValueError: on unparseable PEM or a key that does not match.
    """
    chain = x509.load_pem_x509_certificates(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if key.public_key() != chain[0].public_key():
        raise ValueError("the private key does not match the certificate")
    return chain, key


def _certificate_options(
    chain: Sequence[x509.Certificate], key: Any, **kwargs: Any
) -> CertificateOptions:
    return CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        raiseMinimumTo=TLSVersion.TLSv1_2,
        **kwargs,
    )


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)]


@implementer(IOpenSSLServerConnectionCreator)
class SNIServerContextFactory:
    """
    A TLS server connection creator that chooses among several certificates by
    the SNI host name the client sends.

    Each certificate gets its own context (built once, here), indexed by the
    DNS names of its subject alternative names, exact and C{*.} wildcard. A
    name matching none of them, or no SNI at all, gets the first certificate.
    """

    def __init__(
        self,
        certificates: Sequence[tuple[bytes, bytes]],
        acceptable_protocols: Sequence[bytes] = (b"h2", b"http/1.1"),
    ) -> None:
        """
        @param certificates: C{(cert_pem, key_pem)} pairs; C{cert_pem} may hold
            the intermediate chain after the leaf.
        @param acceptable_protocols: ALPN protocols, most preferred first.

        @raise ValueError: if there are no certificates, or one cannot be read.
        """
        if not certificates:
            raise ValueError("at least one certificate is required")
        self._contexts: dict[str, SSL.Context] = {}
        contexts = []
        for cert_pem, key_pem in certificates:
            chain, key = _load_chain(cert_pem, key_pem)
            context = _certificate_options(
                chain, key, acceptableProtocols=list(acceptable_protocols)
            ).getContext()
            contexts.append(context)
            for name in _dns_names(chain[0]):
                # The first certificate to claim a name keeps it.
                self._contexts.setdefault(name, context)
        self._default = contexts[0]
        # Must be set before the context is used for any connection.
        self._default.set_tlsext_servername_callback(self._select_context)

    def context_for_name(self, server_name: bytes | None) -> SSL.Context:
        """
        The context for an SNI host name: an exact match first, then a
        wildcard for the parent domain (one label only, per RFC 6125), then
        the first certificate's.
        """
        if not server_name:
            return self._default
        try:
            name = server_name.decode("ascii").lower().rstrip(".")
        except UnicodeDecodeError:
            return self._default
        context = self._contexts.get(name)
        if context is not None:
            return context
        label, dot, parent = name.partition(".")
        if label and dot and parent:
            context = self._contexts.get("*." + parent)
            if context is not None:
                return context
        return self._default

    def _select_context(self, connection: SSL.Connection) -> None:
        context = self.context_for_name(connection.get_servername())
        if context is not self._default:
            connection.set_context(context)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._default, None)


def tunnel_server_context(
    cert_pem: bytes,
    key_pem: bytes,
    connector_ca_pem: bytes,
    *,
    refused: RefusedHook | None = None,
) -> IOpenSSLServerConnectionCreator:
    """
    The service side of the tunnel listener: TLS 1.2+, ALPN C{h2} (the
    tunnel) and C{http/1.1} (the enrolment API).  A client certificate is
    verified against the connector CA if one is presented, but not
    required: the enrolment API's registration has none, and the tunnel
    refuses a connection without one after the handshake.  Certificates
    refused are logged with the peer's address (L{TUNNEL_REFUSALS}) and
    given to C{refused} (the service audits expired ones).

    No session tickets and no session cache: every connection makes a full
    handshake, so nothing resumes around the admission check.
    """
    ca_certs = x509.load_pem_x509_certificates(connector_ca_pem)
    chain, key = _load_chain(cert_pem, key_pem)
    options = _certificate_options(
        chain,
        key,
        verify=True,
        requireCertificate=False,
        caCerts=[crypto.X509.from_cryptography(c) for c in ca_certs],
        acceptableProtocols=list(TUNNEL_LISTENER_PROTOCOLS),
        enableSessions=False,
        enableSessionTickets=False,
    )
    # Build (and check) the context now rather than on the first connection.
    context = options.getContext()
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return log_refused_certificates(options, TUNNEL_REFUSALS, refused)


def tunnel_client_options(
    service_host: str, ca_pem: bytes | None, cert_pem: bytes, key_pem: bytes
) -> IOpenSSLClientConnectionCreator:
    """
    The connector side of the tunnel: the service's certificate must be signed
    by C{ca_pem} (L{None}: chain to the system trust store, for a publicly
    trusted certificate) and name C{service_host}; we present our connector
    certificate.
    """
    _load_chain(cert_pem, key_pem)
    if not cert_pem.endswith(b"\n"):
        cert_pem += b"\n"
    return optionsForClientTLS(
        service_host,
        trustRoot=service_trust_root(ca_pem),
        clientCertificate=PrivateCertificate.loadPEM(cert_pem + key_pem),
        acceptableProtocols=[b"h2"],
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
    )


def service_trust_root(ca_pem: bytes | None) -> Any:
    """
    What the connector trusts the service's certificate to chain to: the
    pinned CA C{ca_pem}, or with L{None} the system trust store (OpenSSL's
    default verify paths, which honour C{SSL_CERT_FILE} and C{SSL_CERT_DIR}).
    """
    return platformTrust() if ca_pem is None else Certificate.loadPEM(ca_pem)


def peer_certificate(transport: Any) -> x509.Certificate | None:
    """The (verified) client certificate of a TLS transport, or L{None}."""
    try:
        peer = transport.getPeerCertificate()
        return None if peer is None else peer.to_cryptography()
    except Exception:
        return None


def peer_connector_identity(transport: Any) -> pki.ConnectorIdentity | None:
    """
    The connector named by the (verified) client certificate of a
    C{TLSMemoryBIOProtocol} transport, or L{None} if there is none or it names
    no connector.
    """
    try:
        peer = transport.getPeerCertificate()
        if peer is None:
            return None
        return pki.connector_identity(peer.to_cryptography())
    except Exception:
        return None


def negotiated_protocol(transport: Any) -> bytes | None:
    """The ALPN protocol negotiated on a TLS transport, or L{None}."""
    try:
        protocol = transport.negotiatedProtocol
    except Exception:
        return None
    return protocol if isinstance(protocol, bytes) and protocol else None


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
@attrs.define(eq=False)
class ReloadableTLS:
    """
    A TLS connection creator whose configuration can be replaced while the
    listener or dialler keeps running (certificates renewed, reloaded on
    SIGHUP); connections already open keep the settings they started with.
    """

    current: Any
    """The connection creator new connections use."""

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self.current.serverConnectionForTLS(tlsProtocol)
        return connection

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self.current.clientConnectionForTLS(tlsProtocol)
        return connection
