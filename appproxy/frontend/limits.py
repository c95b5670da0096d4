"""
The request budgets of C{[limits]} (L{appproxy.config.model.LimitsConfig}):
a token bucket per client address (L{appproxy.http.ratelimit}) for each of
three budgets:

  - C{signin}: the sign-in endpoints: the sign-in start and the callback on
    the login host, the hand-off and sign-out paths of an app's host, and
    the built-in provider's C{/authorize} (its forms), C{/token} and device
    endpoints (not the service's own calls to it: L{RequestLimiter.login_budget});
  - C{signed_in}: requests admitted with a valid session;
  - C{anonymous}: every other request (no session, or not a valid one;
    apps that do not sign in; the service's other pages).

A request over its budget gets C{429 Too Many Requests} with C{Retry-After}
and a page naming the budget; it counts in C{appproxy_limit_hits_total}.
The client address is the one the service computes for everything else
(behind C{trusted_proxies}: from C{X-Forwarded-For}).
"""

from __future__ import annotations

import ipaddress
from typing import Final

from twisted.logger import Logger

from appproxy.config.model import LimitsConfig
from appproxy.frontend.answers import SERVICE, Answer, error_answer
from appproxy.http.forwarding import IPAddress, unmapped
from appproxy.http.ratelimit import (
    Budget,
    Throttle,
    TokenBuckets,
    address_key,
    retry_after_header,
)
from appproxy.observe.metrics import LIMIT_HITS

__all__ = ["ANONYMOUS", "SIGNED_IN", "SIGNIN", "SIGNIN_PROVIDER_PATHS", "RequestLimiter"]

ANONYMOUS: Final = "anonymous"
SIGNIN: Final = "signin"
SIGNED_IN: Final = "signed_in"

#: The built-in provider's endpoints (on its host) that are sign-in endpoints.
SIGNIN_PROVIDER_PATHS: Final = frozenset(
    {b"/authorize", b"/token", b"/device", b"/device_authorization"}
)
#: The built-in provider's endpoints the service's own relying party calls.
_BACK_CHANNEL: Final = frozenset(
    {b"/token", b"/jwks", b"/userinfo", b"/.well-known/openid-configuration"}
)

log = Logger()

#: How the 429 page names each budget.
_NAMES: Final = {ANONYMOUS: "anonymous request", SIGNIN: "sign-in", SIGNED_IN: "signed-in request"}


def _budgets(config: LimitsConfig) -> dict[str, Budget]:
    return {
        ANONYMOUS: Budget(config.anonymous_rate, config.anonymous_burst),
        SIGNIN: Budget(config.signin_rate, config.signin_burst),
        SIGNED_IN: Budget(config.signed_in_rate, config.signed_in_burst),
    }


class RequestLimiter:
    """The three budgets' buckets; L{configure} replaces the limits (on reload)."""

    def __init__(self, config: LimitsConfig | None = None) -> None:
        self.config = config or LimitsConfig()
        #: The service's own address as its relying party calls the provider.
        self.own_peer: IPAddress | None = None
        self._logged = Throttle(60.0)
        self._buckets = {
            name: TokenBuckets(budget, self.config.tracked_addresses)
            for name, budget in _budgets(self.config).items()
        }

    def configure(self, config: LimitsConfig, provider_address: str | None = None) -> None:
        """
        New limits: the buckets already filled are kept.  C{provider_address}
        (C{[oidc]}'s): where the service's own relying party connects to the
        built-in provider from, whose back-channel calls are not charged.
        """
        self.config = config
        self.own_peer = _address_of(provider_address)
        for name, budget in _budgets(config).items():
            self._buckets[name].budget = budget
            self._buckets[name].capacity = config.tracked_addresses

    def login_budget(
        self, path: bytes, signs_in: bool, peer: str, client: IPAddress | None = None
    ) -> str | None:
        """
        The budget of a request for C{path} on a login host (C{signs_in}: the
        sign-in start or the callback) from the TCP peer C{peer}, whose client
        address (after C{trusted_proxies}) is C{client} (L{None}: the peer's);
        L{None}: not charged (the service's own call to the built-in provider).

        Only a request from the provider address that no trusted proxy
        forwarded is the service's own: a reverse proxy on the same host
        connects from that address too, for clients of the internet.
        """
        if path in _BACK_CHANNEL and self.own_peer is not None:
            own = _address_of(peer) == self.own_peer
            if own and (client is None or unmapped(client) == self.own_peer):
                return None
        return SIGNIN if signs_in or path in SIGNIN_PROVIDER_PATHS else ANONYMOUS

    def tracked(self, budget: str) -> int:
        """How many addresses C{budget} keeps a bucket for."""
        return len(self._buckets[budget])

    def take(self, budget: str, address: IPAddress, now: float) -> float:
        """
        One request of C{address} against C{budget}: C{0.0} if it may go on,
        else the seconds until it may (counted as a limit hit).
        """
        key, buckets = address_key(address), self._buckets[budget]
        wait = buckets.take(key, now)
        if key not in buckets and not buckets.budget.unlimited:
            if self._logged.due(f"{budget} overflow", now):
                log.warn(
                    "The {budget} budget keeps {tracked} addresses ([limits] tracked_addresses),"
                    " none with a full bucket: new addresses share one bucket (said once a minute)",
                    budget=budget,
                    tracked=len(buckets),
                )
        if wait:
            LIMIT_HITS.labels(limit=budget).inc()
            if self._logged.due(f"{budget} {key}", now):
                log.info(
                    "{address} is over the {budget} budget: answered 429 (said once a minute)",
                    address=key,
                    budget=budget,
                )
        return wait

    def answer(
        self, budget: str, wait: float, request_id: str, now: float, accept: bytes | None
    ) -> tuple[bytes, Answer]:
        """The C{Retry-After} value and the 429 page for a request over C{budget}."""
        bucket = self._buckets[budget].budget
        retry = retry_after_header(wait)
        detail = (
            f"This address sent more requests than the {_NAMES[budget]} limit allows"
            f" ({bucket.rate:g} per second after a burst of {bucket.burst}; [limits]"
            f" {budget}_rate and {budget}_burst). Try again in {retry.decode()} seconds."
        )
        return retry, error_answer(
            429,
            "Too many requests",
            detail,
            source=SERVICE,
            request_id=request_id,
            now=now,
            accept=accept,
        )


def _address_of(text: str | None) -> IPAddress | None:
    """The IP address of C{host}, C{host:port}, C{[v6]:port} or C{v6}; L{None}: not one."""
    if not text:
        return None
    host = text
    if text.startswith("["):
        host = text[1 : text.find("]")]
    elif text.count(":") == 1:
        host = text.partition(":")[0]
    try:
        return unmapped(ipaddress.ip_address(host))
    except ValueError:
        return None
