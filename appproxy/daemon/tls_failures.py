"""
Why a tunnel's TLS handshake failed, in an operator's terms, for both ends.

  - L{describe_tunnel_failure}: the connector's account of a tunnel
    connection that ended before the tunnel was set up (the service's
    certificate names another host, is signed by an unknown CA, has
    expired; or the service refused the connector's certificate);
    L{describe_tls_failure}, its TLS part, also tells why the connector's
    calls to the service's API (its configuration pull, its renewal) fail.
  - L{RefusalLog} / L{log_refused_certificates}: the service's log of the
    connector certificates it refuses, with the peer's address, rate-limited
    per address and reason (a misconfigured connector redials for ever).
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Callable
from typing import Any

import attrs
from cryptography import x509
from OpenSSL import SSL
from OpenSSL.SSL import X509VerificationCodes as Codes
from service_identity import VerificationError
from twisted.internet import error as ierror
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "CA_HINT",
    "SYSTEM_TRUST_HINT",
    "RefusalLog",
    "RefusedHook",
    "describe_tls_failure",
    "describe_tunnel_failure",
    "log_refused_certificates",
    "verify_error_phrase",
]

#: Told of each client certificate the tunnel listener refuses: the peer's
#: address, the certificate (the leaf, when C{depth} is 0) and the X.509
#: verification error code.
RefusedHook = Callable[[str, x509.Certificate, int, int], None]

#: Where to look when the service's certificate is not trusted: the pinned
#: CA, or (L{SYSTEM_TRUST_HINT}) the system trust store.
CA_HINT = "check ca in connector.toml"
SYSTEM_TRUST_HINT = (
    'service_trust is "system" in connector.toml: the system trust store must hold its issuer'
)

_UNKNOWN_CA = "is not signed by a CA we trust (unknown CA)"
_VERIFY_PHRASES: dict[int, str] = {
    Codes.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: _UNKNOWN_CA,
    Codes.ERR_UNABLE_TO_GET_ISSUER_CERT: _UNKNOWN_CA,
    Codes.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: _UNKNOWN_CA,
    Codes.ERR_SELF_SIGNED_CERT_IN_CHAIN: _UNKNOWN_CA,
    Codes.ERR_DEPTH_ZERO_SELF_SIGNED_CERT: "is self-signed (unknown CA)",
    Codes.ERR_CERT_HAS_EXPIRED: "has expired",
    Codes.ERR_CERT_NOT_YET_VALID: "is not valid yet (check the clocks)",
    Codes.ERR_CERT_REVOKED: "is revoked",
    Codes.ERR_CERT_SIGNATURE_FAILURE: "has a bad signature",
    Codes.ERR_INVALID_PURPOSE: "is not meant for this use (extended key usage)",
}

#: What the peer's TLS alert says about our certificate.
_ALERT_PHRASES: dict[str, str] = {
    "unknown ca": "it is not signed by the service's connector CA (unknown CA)",
    "certificate expired": "it has expired",
    "certificate revoked": "it is revoked",
    "certificate required": "none was presented",
    "bad certificate": "bad certificate",
    "unsupported certificate": "unsupported certificate",
    "certificate unknown": "certificate unknown",
    "access denied": "access denied",
}

_ALERT = re.compile(r"alert (.+)$")


def verify_error_phrase(code: int) -> str:
    """What an X.509 verification error code says about a certificate."""
    return _VERIFY_PHRASES.get(code, f"failed verification (OpenSSL error {code})")


def _ssl_reasons(exc: SSL.Error) -> list[str]:
    reasons = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(item, tuple) and item:
            reasons.append(str(item[-1]))
    return reasons or [str(exc)]


def _verify_result(connection: Any) -> int | None:
    """
    The X.509 verification result of a client connection's handshake.
    pyOpenSSL has no public call for it; a diagnosis without it is vaguer,
    never wrong, so any failure here gives L{None}.
    """
    try:
        from OpenSSL._util import lib

        code = int(lib.SSL_get_verify_result(connection._ssl))
    except Exception:
        return None
    return code or None


def describe_tunnel_failure(
    reason: Failure, connection: Any, service_host: str, ca_hint: str = CA_HINT
) -> str:
    """
    Why a tunnel connection ended before the tunnel was set up, for the
    connector's log.

    @param connection: the connection's L{SSL.Connection} if still known
        (for the verification result), else L{None}.
    """
    exc = reason.value
    described = (
        describe_tls_failure(exc, connection, service_host, ca_hint) if exc is not None else None
    )
    if described is not None:
        return described
    if isinstance(exc, ierror.ConnectionDone | ierror.ConnectionLost):
        return "the service closed the connection before the tunnel was set up"
    return f"the connection failed before the tunnel was set up: {exc}"


def describe_tls_failure(
    exc: BaseException, connection: Any, service_host: str, ca_hint: str = CA_HINT
) -> str | None:
    """
    Why TLS with the service failed, in an operator's terms (the tunnel's
    and the connector's calls to the service's API say it alike); L{None}
    if C{exc} is no TLS failure.

    @param connection: the connection's L{SSL.Connection} if still known
        (for the verification result), else L{None}.
    """
    if isinstance(exc, VerificationError):
        return (
            f"certificate verify failed: the service's certificate is not valid for "
            f"{service_host} (name mismatch: check service_host in connector.toml)"
        )
    if isinstance(exc, SSL.Error):
        reasons = _ssl_reasons(exc)
        if any("certificate verify failed" in r for r in reasons):
            code = _verify_result(connection) if connection is not None else None
            what = verify_error_phrase(code) if code else "could not be verified"
            return f"certificate verify failed: the service's certificate {what} ({ca_hint})"
        for text in reasons:
            match = _ALERT.search(text)
            if match:
                alert = match.group(1).strip()
                if alert in _ALERT_PHRASES:
                    return (
                        f"the service refused this connector's certificate: {_ALERT_PHRASES[alert]}"
                    )
                return f"the service ended the TLS handshake: {alert}"
        return f"TLS handshake failed: {'; '.join(reasons)}"
    return None


@attrs.define(eq=False)
class RefusalLog:
    """
    Logs refused connector certificates: one line per peer address and
    reason per C{interval} seconds, with the count of those left out.
    """

    log: Logger
    interval: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _last: dict[tuple[str, str], tuple[float, int]] = attrs.field(init=False, factory=dict)

    def refused(self, peer: str, reason: str, subject: str) -> None:
        key = (peer, reason)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        if len(self._last) >= 1024:
            self._last.clear()  # bounded: a flood of addresses forgets
        self._last[key] = (now, 0)
        more = last[1] if last is not None else 0
        self.log.warn(
            "Refused a tunnel connection from {peer}: its certificate ({subject}) {reason}{more}",
            peer=peer,
            subject=subject,
            reason=reason,
            more=f" ({more} more refusals like it since the last report)" if more else "",
        )


@implementer(IOpenSSLServerConnectionCreator)
@attrs.define(eq=False)
class _LoggingServerTLS:
    options: Any
    refusals: RefusalLog
    hook: RefusedHook | None = None

    def getContext(self) -> SSL.Context:
        context: SSL.Context = self.options.getContext()
        return context

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self.options.serverConnectionForTLS(tlsProtocol)
        # The same checks as the context's; only the failures are noted.
        mode = connection.get_context().get_verify_mode()
        connection.set_verify(mode, self._callback(weakref.ref(tlsProtocol)))
        return connection

    def _callback(self, protocol: Callable[[], Any]) -> Callable[..., bool]:
        reported = False

        def verify(conn: SSL.Connection, cert: Any, code: int, depth: int, ok: int) -> bool:
            nonlocal reported
            if not ok and not reported:
                reported = True
                try:
                    tls = protocol()
                    peer = tls.transport.getPeer() if tls is not None else None
                    certificate = cert.to_cryptography()
                    address = str(getattr(peer, "host", peer))
                    self.refusals.refused(
                        address, verify_error_phrase(code), certificate.subject.rfc4514_string()
                    )
                    if self.hook is not None:
                        self.hook(address, certificate, code, depth)
                except Exception:
                    self.refusals.log.failure("Logging a refused connector certificate")
            return bool(ok)

        return verify


def log_refused_certificates(
    options: Any, refusals: RefusalLog, hook: RefusedHook | None = None
) -> IOpenSSLServerConnectionCreator:
    """
    C{options} (a server connection creator that checks client
    certificates), logging each certificate it refuses to C{refusals} and
    telling C{hook}, if given.
    """
    return _LoggingServerTLS(options, refusals, hook)
