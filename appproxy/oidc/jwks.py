"""
L{JwksCache}: the provider's signing keys, fetched when needed and re-fetched
at most once per interval however many unknown key ids arrive.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

import attrs
import jwt
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from appproxy.oidc._shared_call import SharedCall
from appproxy.oidc.errors import SignInError
from appproxy.oidc.keys import parse_jwks

__all__ = ["JwksCache"]


def _keys_unavailable() -> SignInError:
    return SignInError("id-token", "The identity provider's signing keys could not be fetched")


@attrs.define(eq=False)
class JwksCache:
    """
    A provider's signing keys, fetched when needed.

    Keys are served from the cache while they are younger than C{max_age}
    and know the C{kid} asked for.  An unknown C{kid} triggers a re-fetch
    (the provider may have rotated its keys), but at most one fetch starts
    per C{min_refetch_interval}: a flood of tokens with made-up key ids must
    not become a flood of requests to the provider.  Callers that arrive
    during a fetch share it.  If a re-fetch fails, the old keys are used.

    @ivar _fetch: fetches the JWKS document.
    @ivar _clock: the time source.
    @ivar _min_refetch_interval: the least time between the starts of two
        fetches (seconds).
    @ivar _max_age: how long fetched keys are used before being fetched
        again (seconds).
    @ivar fetches: how many fetches were started.
    """

    _log = Logger()

    _fetch: Callable[[], Deferred[bytes]]
    _clock: IReactorTime
    _min_refetch_interval: float = 30.0
    _max_age: float = 3600.0
    _keys: dict[str, jwt.PyJWK] | None = attrs.field(default=None, init=False)
    _fetched_at: float | None = attrs.field(default=None, init=False)
    _attempted_at: float | None = attrs.field(default=None, init=False)
    _refresh: SharedCall[dict[str, jwt.PyJWK]] = attrs.field(init=False)
    fetches: int = attrs.field(default=0, init=False)

    @_refresh.default
    def _shared_load(self) -> SharedCall[dict[str, jwt.PyJWK]]:
        return SharedCall(self._load)

    def _knows(self, kid: str | None) -> bool:
        if self._keys is None:
            return False
        if kid is None:
            return bool(self._keys)
        return any(key.key_id == kid for key in self._keys.values())

    def get_keys(self, kid: str | None) -> Deferred[Mapping[str, jwt.PyJWK]]:
        """
        The keys, such that they include C{kid} if the provider publishes it.

        @param kid: the key id a token names, or L{None}.

        @return: a L{Deferred} firing with the keys (see L{parse_jwks}); it
            fails with L{SignInError} (step C{"id-token"}) only when there are
            no keys at all and they cannot be fetched.
        """
        now = self._clock.seconds()
        fresh = self._fetched_at is not None and now - self._fetched_at < self._max_age
        if fresh and self._knows(kid):
            return succeed(self._keys or {})
        recently = (
            self._attempted_at is not None and now - self._attempted_at < self._min_refetch_interval
        )
        if recently and not self._refresh.running:
            return self._cached()
        # Joins the fetch under way, if there is one.
        return cast("Deferred[Mapping[str, jwt.PyJWK]]", self._refresh())

    def _cached(self) -> Deferred[Mapping[str, jwt.PyJWK]]:
        if self._keys is None:
            return fail(_keys_unavailable())
        return succeed(self._keys)

    def _load(self) -> Deferred[dict[str, jwt.PyJWK]]:
        self._attempted_at = self._clock.seconds()
        self.fetches += 1

        def loaded(document: bytes) -> dict[str, jwt.PyJWK]:
            keys, skipped = parse_jwks(document)
            for reason in skipped:
                self._log.warn("Skipping a key in the provider's JWKS: {reason}", reason=reason)
            self._keys = keys
            self._fetched_at = self._clock.seconds()
            self._log.info("Loaded {count} signing keys from the provider", count=len(keys))
            return keys

        def failed(failure: Failure) -> dict[str, jwt.PyJWK]:
            error = failure.value
            self._log.warn(
                "Fetching the provider's signing keys failed: {error}",
                error=error.reason if isinstance(error, SignInError) else repr(error),
            )
            if self._keys is not None:
                return self._keys
            raise _keys_unavailable()

        return self._fetch().addCallback(loaded).addErrback(failed)
