"""
The connector's standing with the service, for its whole life: its
configuration pulled over mutual TLS (C{GET /v1/config}) and its
certificate renewed before it grows old (C{POST /v1/renew}).

L{ConnectorTrust} pulls at start (retrying with backoff until it has a
configuration: until then the connector dials no tunnel and serves
nothing), every C{config_interval} seconds, and whenever it is asked to
(the service pushed settings on a tunnel connection).  After each pull it
renews the certificate if it is older than the pulled C{renew_after} or
past two thirds of its life: a new key made here, a CSR sent with the
current certificate, the new pair written crash-safely
(L{appproxy.connector.keyfiles}) and handed to the daemon, which uses it
for new tunnel connections; open ones carry on.  A failed renewal is
tried again by itself with backoff (about 1 s, doubling up to a minute,
and always before the certificate expires) until it works; once the
certificate has expired, one error says what to run to register again.

Why a pull or a renewal fails is logged once per reason, in the same
operator's terms as the tunnel's (L{appproxy.daemon.redial.DialReport},
L{appproxy.daemon.tls_failures}: a service certificate for another name or
from an unknown CA, this connector's certificate refused), until it works
again; pulls back off as the tunnel's dials do (L{Redial}).
"""

from __future__ import annotations

import datetime
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from appproxy.connector.enrolment import (
    ApiFailure,
    EnrolmentClient,
    ServiceAddress,
    UnreachableService,
    failure_reason,
    verified_tls,
)
from appproxy.connector.keyfiles import install_renewal, key_matches
from appproxy.daemon import pki
from appproxy.daemon.csr import make_csr, new_connector_key
from appproxy.daemon.redial import DialReport, Redial
from appproxy.daemon.tls_failures import CA_HINT, SYSTEM_TRUST_HINT
from appproxy.tunnel.enrolment import (
    CONFIG_PATH,
    RENEW_PATH,
    CertificateAnswer,
    ConnectorSettings,
    RenewRequest,
)

__all__ = ["ConnectorTrust", "expired_message", "renewal_due"]

#: Backoff of the pulls and renewals that failed: the first retry after
#: about this many seconds (+-20% jitter)...
FIRST_RETRY = 1.0
#: ...doubling up to this many (for pulls, or the pulled config_interval if
#: shorter; a renewal is always tried again before the certificate expires).
MAX_RETRY = 60.0

PULL_FAILED = "Cannot pull the configuration from {service}: {reason}; retrying with backoff"
PULL_WORKS = "Configuration pulled from {service} again"
RENEWAL_FAILED = (
    "Cannot renew this connector's certificate at {service}: {reason}; trying again with backoff"
)


def _validity(cert_pem: bytes) -> tuple[float, float]:
    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def _when(timestamp: float) -> str:
    when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def renewal_due(cert_pem: bytes, renew_after: float, now: float) -> bool:
    """Whether a certificate is older than C{renew_after} seconds or past two thirds of its life."""
    not_before, not_after = _validity(cert_pem)
    age = now - not_before
    return age >= renew_after or age >= (not_after - not_before) * 2 / 3


def expired_message(
    cert_pem: bytes,
    cert_path: Path,
    ca_pem: bytes | None,
    service: ServiceAddress,
    state_dir: Path,
    now: float,
) -> str | None:
    """
    L{None} while the certificate is valid; once it has expired, what to
    tell the administrator: when it expired and exactly what to run
    (C{ca_pem} L{None}: the service is verified with the system trust store).
    """
    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    not_after = cert.not_valid_after_utc
    if not_after.timestamp() > now:
        return None
    try:
        group = pki.connector_identity(cert).group
    except ValueError:
        group = "GROUP"
    address = f" --address {service.address}" if service.address else ""
    trust = "--system-trust" if ca_pem is None else f"--ca-fingerprint {pki.ca_fingerprint(ca_pem)}"
    when = _when(not_after.timestamp())
    return (
        f"the connector certificate {cert_path} expired on {when}: the service refuses it,"
        " so this connector must be registered again. On the service host run"
        f" 'appproxy connectors token create --group {group}', put the token in a file"
        " here, then run 'appproxy-connector register"
        f" --service https://{service.host}:{service.port}{address}"
        f" {trust} --state-dir {state_dir}"
        f" --group {group} --token-file FILE --force' and start the connector again"
    )


def _fire(waiting: list[Deferred[None]]) -> None:
    for d in waiting:
        if not d.called:
            d.callback(None)


@attrs.define(eq=False)
class ConnectorTrust:
    """Pulls the configuration and renews the certificate (see the module)."""

    log = Logger()

    reactor: Any
    service: ServiceAddress
    ca_pem: bytes | None = attrs.field(repr=False)
    """The CA the service's certificate must chain to (L{None}: the system trust store)."""
    cert_path: Path
    key_path: Path
    cert_pem: bytes = attrs.field(repr=False)
    key_pem: bytes = attrs.field(repr=False)
    configured: Callable[[ConnectorSettings], object]
    """Given each configuration pulled."""
    renewed: Callable[[bytes, bytes], object]
    """Given the renewed certificate and key, once they are on disk."""
    now: Callable[[], float] = time.time
    settings: ConnectorSettings | None = attrs.field(init=False, default=None)
    pulls: int = attrs.field(init=False, default=0)
    """Configurations pulled since start."""
    renewals: int = attrs.field(init=False, default=0)
    _timer: IDelayedCall | None = attrs.field(init=False, default=None)
    _pulling: Deferred[None] | None = attrs.field(init=False, default=None)
    _again: bool = attrs.field(init=False, default=False)
    #: Waiting for the pull in flight, and for the one after it.
    _waiting: list[Deferred[None]] = attrs.field(init=False, factory=list)
    _waiting_next: list[Deferred[None]] = attrs.field(init=False, factory=list)
    _stopped: bool = attrs.field(init=False, default=False)
    #: The pulls' backoff, reset by a pull that works.
    _backoff: Redial = attrs.field(init=False)
    #: The delays before the pulls retried, newest last (bounded).
    pull_delays: deque[float] = attrs.field(init=False, factory=lambda: deque(maxlen=64))
    #: Why pulls fail, told once per reason.
    report: DialReport = attrs.field(init=False)
    #: The renewal tried again after a failure, and its backoff.
    _renew_timer: IDelayedCall | None = attrs.field(init=False, default=None)
    _renew_call: Deferred[None] | None = attrs.field(init=False, default=None)
    _renewing: bool = attrs.field(init=False, default=False)
    _renew_backoff: Redial = attrs.field(init=False)
    renew_report: DialReport = attrs.field(init=False)
    renew_attempts: int = attrs.field(init=False, default=0)
    """Renewals tried since start (well or not)."""
    _expired_told: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self._backoff = Redial(FIRST_RETRY, MAX_RETRY)
        self._renew_backoff = Redial(FIRST_RETRY, MAX_RETRY)
        service = str(self.service)
        self.report = DialReport(
            self.log, service, self.service.host, PULL_FAILED, PULL_WORKS, error=True
        )
        self.renew_report = DialReport(
            self.log, service, self.service.host, RENEWAL_FAILED, None, error=True
        )

    def client(self, mutual: bool = True) -> EnrolmentClient:
        tls = verified_tls(
            self.service.host,
            self.ca_pem,
            self.cert_pem if mutual else None,
            self.key_pem if mutual else None,
        )
        return EnrolmentClient(self.reactor, self.service, tls)

    def start(self) -> None:
        self._stopped = False
        self.pull()

    def stop(self) -> None:
        self._stopped = True
        self._cancel_timer()
        if self._renew_timer is not None and self._renew_timer.active():
            self._renew_timer.cancel()
        self._renew_timer = None
        if self._renew_call is not None:
            self._renew_call.cancel()
        if self._pulling is not None:
            self._pulling.cancel()
        _fire(self._waiting + self._waiting_next)
        self._waiting, self._waiting_next = [], []

    def use(self, cert_pem: bytes, key_pem: bytes, ca_pem: bytes | None) -> None:
        """The daemon reloaded its files (SIGHUP): use them from now on."""
        self.cert_pem, self.key_pem, self.ca_pem = cert_pem, key_pem, ca_pem
        self._expired_told = False

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, delay: float) -> None:
        self._cancel_timer()
        if not self._stopped:
            self._timer = self.reactor.callLater(delay, self.pull)

    def pull(self) -> Deferred[None] | None:
        """Pull now (once more after the pull in flight, if there is one)."""
        if self._stopped:
            return None
        if self._pulling is not None:
            self._again = True
            return self._pulling
        self._cancel_timer()
        pulling = self._pulling = Deferred.fromCoroutine(self._pull())
        pulling.addErrback(self._pull_broke)
        pulling.addBoth(self._pulled)
        return pulling

    def pulled(self, timeout: float) -> Deferred[None]:
        """
        Pull now; fires when a pull begun after this call has ended (well or
        not), or after C{timeout} seconds, whichever comes first.
        """
        done: Deferred[None] = Deferred()
        if self._stopped:
            done.callback(None)
            return done
        (self._waiting_next if self._pulling is not None else self._waiting).append(done)
        self.pull()
        timer = self.reactor.callLater(timeout, _fire, [done])
        done.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
        return done

    def _pull_broke(self, failure: Any) -> None:
        if not self._stopped:
            self.log.failure("Configuration pull failed", failure)
            self._schedule(self._backoff(0))

    def _pulled(self, _: object) -> None:
        self._pulling = None
        waiting, self._waiting = self._waiting, self._waiting_next
        self._waiting_next = []
        _fire(waiting)
        if self._again and not self._stopped:
            self._again = False
            self.pull()
        else:
            _fire(self._waiting)
            self._waiting = []

    def reason(self, failure: Exception) -> str:
        """Why a call to the service failed, for the operator (no call named)."""
        hint = SYSTEM_TRUST_HINT if self.ca_pem is None else CA_HINT
        return failure_reason(failure, self.service.host, hint)

    async def _pull(self) -> None:
        try:
            settings: ConnectorSettings = await self.client().get(CONFIG_PATH, ConnectorSettings)
        except (ApiFailure, UnreachableService) as e:
            delay = self._backoff(0)
            self.pull_delays.append(delay)
            self.report.failed(self.reason(e))
            self._schedule(delay)
            return
        self._backoff.established()
        self._backoff.maximum = min(MAX_RETRY, max(settings.config_interval, FIRST_RETRY))
        self.report.established()
        changed = self.settings is None or self.settings.version != settings.version
        self.settings = settings
        self.pulls += 1
        if changed:
            self.log.info(
                "Configuration pulled (version {version}): group {group}, apps: {apps}",
                version=settings.version,
                group=settings.group,
                apps=", ".join(app.name for app in settings.apps) or "none",
            )
        self._schedule(max(settings.config_interval, 1.0))
        # Renewed before the configuration is applied: the tunnel connections
        # it dials at start then present the new certificate, not one the
        # service is retiring (which it would refuse).
        if self._renew_timer is None and not self._renewing:
            await self._renew_if_due()
        self.configured(settings)

    async def _renew_if_due(self) -> None:
        """
        Renew if due; if that fails, try again with backoff (not at every
        pull: a pull is not a reason to try sooner), always before the
        certificate expires, and stop once it has expired.
        """
        settings = self.settings
        if settings is None or not renewal_due(self.cert_pem, settings.renew_after, self.now()):
            return
        self._renewing = True
        self.renew_attempts += 1
        try:
            await self.renew()
        except CancelledError:
            raise
        except (ApiFailure, UnreachableService, ValueError, OSError) as e:
            self._renew_failed(self.reason(e))
        else:
            self._renew_backoff.established()
            self.renew_report.established()
        finally:
            self._renewing = False

    def _renew_failed(self, reason: str) -> None:
        if self._stopped:
            return
        now = self.now()
        not_after = _validity(self.cert_pem)[1]
        if now >= not_after:
            if not self._expired_told:
                self._expired_told = True
                self.log.error(
                    # Not "message": the legacy log system owns that key.
                    "Cannot renew: {expired}",
                    expired=expired_message(
                        self.cert_pem,
                        self.cert_path,
                        self.ca_pem,
                        self.service,
                        self.cert_path.parent,
                        now,
                    ),
                )
            return
        self.renew_report.failed(f"{reason} (the certificate expires at {_when(not_after)})")
        delay = min(self._renew_backoff(0), max((not_after - now) / 2, FIRST_RETRY))
        self._renew_timer = self.reactor.callLater(delay, self._renew_again)

    def _renew_again(self) -> None:
        self._renew_timer = None
        if self._stopped or self._renewing:
            return
        renewing = self._renew_call = Deferred.fromCoroutine(self._renew_if_due())
        renewing.addErrback(
            lambda failure: (
                None
                if failure.check(CancelledError)
                else self.log.failure("Certificate renewal failed", failure)
            )
        )
        renewing.addBoth(lambda _: setattr(self, "_renew_call", None))

    async def renew(self) -> None:
        """A new key and certificate, on disk and handed to the daemon."""
        key_pem = new_connector_key()
        request = RenewRequest(csr=make_csr(key_pem).decode("ascii"))
        answer: CertificateAnswer = await self.client().post(RENEW_PATH, request, CertificateAnswer)
        cert_pem = answer.certificate.encode("ascii")
        if not key_matches(cert_pem, key_pem):
            raise ValueError("the service's renewed certificate is not for the key sent")
        await deferToThread(install_renewal, self.cert_path, self.key_path, cert_pem, key_pem)
        self.cert_pem, self.key_pem = cert_pem, key_pem
        self.renewals += 1
        self.renewed(cert_pem, key_pem)
        self.log.info(
            "Certificate renewed: serial {serial}, valid until {not_after}; new tunnel"
            " connections use it",
            serial=pki.certificate_serial(cert_pem),
            not_after=datetime.datetime.fromtimestamp(answer.not_after, datetime.UTC).isoformat(),
        )
