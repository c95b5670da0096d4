"""
L{RelyingParty}: appproxy signing users in at an identity provider with the
authorization code flow (PKCE, S256), over the network.

This is the thin Twisted shell around the pure modules of this package
(L{appproxy.oidc.metadata}, L{appproxy.oidc.authorize}, L{appproxy.oidc.tokens}):
discovery, the code exchange and ID-token verification over its own TLS
client (L{appproxy.oidc._provider_http}), which trusts only the configured roots
and can be pointed at a fixed address, with the provider's keys in a
L{JwksCache}.

Every failure is a L{SignInError} naming the step of the sign-in that failed
and a reason that is safe to show to the user: it never holds a token, a
code or a secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from appproxy.oidc._shared_call import SharedCall
from appproxy.oidc.authorize import end_session_url
from appproxy.oidc.errors import SignInError
from appproxy.oidc.jwks import JwksCache
from appproxy.oidc.metadata import METADATA_MAX_AGE, ProviderMetadata, parse_metadata
from appproxy.oidc.settings import RelyingPartySettings
from appproxy.oidc.tokens import (
    TokenResponse,
    code_exchange_request,
    parse_token_response,
    token_header,
    verify_id_token,
)

if TYPE_CHECKING:
    from twisted.web.client import HTTPConnectionPool

__all__ = ["MAX_RESPONSE_SIZE", "RelyingParty"]

#: Discovery, JWKS and token responses larger than this are refused.
MAX_RESPONSE_SIZE = 1024 * 1024

_ACCEPT_JSON = {b"Accept": [b"application/json"]}


@attrs.define(eq=False)
class RelyingParty:
    """
    appproxy as the relying party of one OpenID provider: discovery, the
    code exchange, ID-token verification, sign-out URLs.

    Requests go through its own HTTP client: https only, the provider's
    certificate verified against C{settings.ca_pem} (or the system's trust
    store), C{settings.provider_address} honoured, redirects not followed,
    no cookies kept, each request limited to C{settings.timeout} seconds and
    its response to L{MAX_RESPONSE_SIZE}.  Call L{close} when done with it.

    @ivar settings: the provider and how to reach it.
    @ivar _clock: the time source (token times, caches, timeouts).
    @ivar _reactor: the reactor to connect with (C{IReactorTCP} and
        C{IReactorTime}).
    @ivar _http: an HTTP client with treq's C{request} method to use instead
        of building one (for tests: C{treq.testing.StubTreq}).
    @ivar _jwks_refetch_interval: the least time between two fetches of the
        provider's keys (see L{JwksCache}).
    @ivar jwks: the provider's signing keys.
    """

    _log = Logger()

    settings: RelyingPartySettings
    _clock: IReactorTime = attrs.field(kw_only=True)
    _reactor: Any = attrs.field(kw_only=True)
    _http: Any = attrs.field(default=None, kw_only=True)
    _jwks_refetch_interval: float = attrs.field(default=30.0, kw_only=True)
    _pool: HTTPConnectionPool | None = attrs.field(default=None, init=False)
    _metadata: ProviderMetadata | None = attrs.field(default=None, init=False)
    _metadata_at: float | None = attrs.field(default=None, init=False)
    _discover: SharedCall[ProviderMetadata] = attrs.field(init=False)
    jwks: JwksCache = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._discover = SharedCall(self._fetch_metadata)
        self.jwks = JwksCache(
            self._fetch_jwks, self._clock, min_refetch_interval=self._jwks_refetch_interval
        )

    def _client(self) -> Any:
        """
        The HTTP client, built at the first request to the provider: its
        modules (treq, twisted.web's client) are then imported, not when the
        service starts, which keeps them out of the memory of a service
        nobody has signed in to yet (docs/performance.md).  The provider's CA
        file was checked with the configuration.
        """
        if self._http is None:
            from appproxy.oidc._provider_http import provider_http_client

            self._http, self._pool = provider_http_client(self._reactor, self.settings)
        return self._http

    def close(self) -> Deferred[None]:
        """Close the client's idle connections; fires when they are closed."""
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()

    def _request(
        self, step: str, what: str, method: str, url: str, **kwargs: Any
    ) -> Deferred[tuple[int, bytes]]:
        """
        Make a request and read its body, within the timeout and size limit.

        @param step: the sign-in step a failure is reported as.
        @param what: what is fetched, for messages (C{"discovery document"}).

        @return: the status and body; fails with L{SignInError} if the
            provider cannot be reached or the response is too large.
        """

        from appproxy.oidc._provider_http import ResponseTooLarge, read_body

        http = self._client()

        async def request() -> tuple[int, bytes]:
            response = await http.request(
                method, url, allow_redirects=False, unbuffered=True, **kwargs
            )
            body = await read_body(response, MAX_RESPONSE_SIZE)
            return response.code, body

        def failed(failure: Failure) -> Failure:
            if failure.check(ResponseTooLarge):
                reason = f"The identity provider's {what} is too large"
            elif failure.check(SignInError):
                return failure
            else:
                reason = f"The identity provider could not be reached ({what})"
            self._log.warn(
                "{method} {url} failed: {error}",
                method=method,
                url=url,
                error=failure.getErrorMessage() or repr(failure.value),
            )
            raise SignInError(step, reason)

        deferred: Deferred[tuple[int, bytes]] = Deferred.fromCoroutine(request())
        deferred.addTimeout(self.settings.timeout, self._clock)
        return deferred.addErrback(failed)

    # -- discovery

    def metadata(self) -> Deferred[ProviderMetadata]:
        """
        The provider's metadata: cached for an hour; fetched again after
        that (a failed fetch is not cached: the next call tries again; until
        a fetch succeeds, the old metadata is used if there is any).

        @return: fails with L{SignInError} (step C{"discovery"}).
        """
        if (
            self._metadata is not None
            and self._metadata_at is not None
            and self._clock.seconds() - self._metadata_at < METADATA_MAX_AGE
        ):
            return succeed(self._metadata)
        return self._discover()

    def _get(self, step: str, what: str, url: str) -> Deferred[bytes]:
        """
        Fetch a JSON document from the provider.

        @param step: the sign-in step a failure is reported as.
        @param what: what is fetched, for messages (C{"discovery document"}).

        @return: the body; fails with L{SignInError} if the provider cannot
            be reached, the response is too large or its status is not 200.
        """

        def check(result: tuple[int, bytes]) -> bytes:
            code, body = result
            if code != 200:
                raise SignInError(
                    step, f"The identity provider's {what} answered HTTP status {code}"
                )
            return body

        return self._request(step, what, "GET", url, headers=_ACCEPT_JSON).addCallback(check)

    def _fetch_metadata(self) -> Deferred[ProviderMetadata]:
        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"

        def parse(body: bytes) -> ProviderMetadata:
            metadata = parse_metadata(body, self.settings.issuer)
            self._metadata, self._metadata_at = metadata, self._clock.seconds()
            if self.settings.client_auth not in metadata.token_endpoint_auth_methods_supported:
                self._log.warn(
                    "The provider does not list {method} among its client authentication"
                    " methods; trying it anyway",
                    method=self.settings.client_auth,
                )
            return metadata

        def stale(failure: Failure) -> ProviderMetadata:
            error = failure.value
            if not isinstance(error, SignInError):
                failure.raiseException()
            assert isinstance(error, SignInError)
            self._log.warn("Discovery at {url} failed: {reason}", url=url, reason=error.reason)
            if self._metadata is None:
                raise error
            return self._metadata

        return (
            self._get("discovery", "discovery document", url).addCallback(parse).addErrback(stale)
        )

    def _fetch_jwks(self) -> Deferred[bytes]:
        def fetch(metadata: ProviderMetadata) -> Deferred[bytes]:
            return self._get("id-token", "signing keys", metadata.jwks_uri)

        return self.metadata().addCallback(fetch)

    # -- the code exchange

    def exchange_code(self, code: str, verifier: str) -> Deferred[TokenResponse]:
        """
        Exchange an authorization code (and its PKCE verifier) for tokens.

        @return: fails with L{SignInError}: step C{"token"} if the provider
            refuses or cannot be reached, C{"discovery"} if its metadata
            cannot be had.
        """
        headers, body = code_exchange_request(self.settings, code, verifier)

        def post(metadata: ProviderMetadata) -> Deferred[tuple[int, bytes]]:
            return self._request(
                "token",
                "token endpoint",
                "POST",
                metadata.token_endpoint,
                headers=headers,
                data=body,
            )

        def parse(result: tuple[int, bytes]) -> TokenResponse:
            status, content = result
            try:
                return parse_token_response(status, content)
            except SignInError as error:
                self._log.warn("The code exchange failed: {reason}", reason=error.reason)
                raise

        return self.metadata().addCallback(post).addCallback(parse)

    # -- verification

    def verify(
        self, id_token: str, nonce: str, *, max_age: int | None = None
    ) -> Deferred[dict[str, Any]]:
        """
        Verify an ID token (see L{verify_id_token}) with the provider's
        current keys, re-fetching them if the token names an unknown key.

        @return: the claims; fails with L{SignInError} (step C{"id-token"},
            or C{"discovery"}).
        """

        async def verify() -> dict[str, Any]:
            metadata = await self.metadata()
            kid = token_header(id_token).get("kid")
            keys = await self.jwks.get_keys(kid if isinstance(kid, str) else None)
            try:
                return verify_id_token(
                    id_token,
                    keys=keys,
                    settings=self.settings,
                    metadata=metadata,
                    nonce=nonce,
                    now=int(self._clock.seconds()),
                    max_age=max_age,
                )
            except SignInError as error:
                self._log.warn("An ID token was refused: {reason}", reason=error.reason)
                raise

        return Deferred.fromCoroutine(verify())

    # -- sign-out

    def end_session_url(
        self, id_token_hint: str | None, post_logout_redirect_uri: str | None
    ) -> str | None:
        """
        The provider's logout URL (see L{end_session_url}), from the metadata
        last fetched; L{None} if the provider has no C{end_session_endpoint}
        or no metadata has been fetched yet (wait for L{metadata} first to be
        sure).
        """
        if self._metadata is None:
            return None
        return end_session_url(
            self._metadata,
            self.settings,
            id_token_hint=id_token_hint,
            post_logout_redirect_uri=post_logout_redirect_uri,
        )
