"""
A rogue OpenID provider for tests.

L{FakeProvider} is a C{twisted.web} resource tree that behaves as a small
OpenID provider (discovery, authorize, token, JWKS, end-session), checks what
a relying party sends it (client authentication, redirect URI, PKCE), and can
be told to issue bad ID tokens (L{FakeProvider.mode}, see L{MODES}) or to
rotate its keys.  L{serve_tls} serves it over real TLS on 127.0.0.1 with a
certificate from a fresh test CA; L{ServedProvider.settings} then gives
L{RelyingPartySettings} that reach it (C{provider_address}, C{ca_pem}).

Typical use::

    provider = FakeProvider(issuer="https://idp.test")
    served = serve_tls(provider, reactor)
    self.addCleanup(served.stop)
    rp = RelyingParty(served.settings(), clock=reactor, reactor=reactor)
    self.addCleanup(rp.close)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.ssl import PrivateCertificate
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from appproxy.daemon import pki
from appproxy.oidc.settings import RelyingPartySettings

__all__ = [
    "MODES",
    "Authorization",
    "FakeProvider",
    "ServedProvider",
    "serve_tls",
]

#: What L{FakeProvider.mode} can be: C{"good"} tokens, or one attack each.
MODES = (
    "good",
    "alg-none",  # unsigned: {"alg": "none"}
    "hs256-public-key",  # HMAC-SHA256 keyed with the public key's PEM (key confusion)
    "bad-signature",  # a good token with its claims altered after signing
    "wrong-iss",
    "wrong-aud",
    "wrong-azp",  # aud [client, other], azp other
    "multiple-aud-no-azp",
    "wrong-nonce",
    "no-nonce",
    "expired",
    "future-iat",
    "future-nbf",
    "missing-iat",
    "no-sub",
    "unknown-kid",  # signed with a key the JWKS does not publish
)

DEFAULT_CLAIMS: Mapping[str, object] = {
    "sub": "248289761001",
    "preferred_username": "alice",
    "name": "Alice Example",
    "email": "alice@example.com",
    "groups": ["staff", "wiki-editors"],
    "amr": ["pwd"],
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_b64(value: object) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode("utf-8"))


@attrs.define
class _SigningKey:
    kid: str
    algorithm: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, algorithm: str) -> _SigningKey:
        kid = "key-" + secrets.token_hex(4)
        if algorithm.startswith(("RS", "PS")):
            return cls(kid, algorithm, rsa.generate_private_key(65537, 2048))
        if algorithm == "ES256":
            return cls(kid, algorithm, ec.generate_private_key(ec.SECP256R1()))
        raise ValueError(f"the fake provider cannot sign with {algorithm}")

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, header: Mapping[str, object], payload: Mapping[str, object]) -> str:
        return jwt.encode(
            dict(payload), self.private, algorithm=self.algorithm, headers=dict(header)
        )


@attrs.define
class Authorization:
    """An authorization the fake granted: what the token request must match."""

    code: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    scope: str
    #: The claims of the user who signed in (with any step-up claims).
    claims: dict[str, object]


def _error(request: Request, status: int, error: str, description: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps({"error": error, "error_description": description}).encode()


def _json(request: Request, value: object) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(value).encode()


def _args(request: Request) -> dict[str, str]:
    """The request's query (GET) or form (POST) arguments, one value each."""
    args: dict[str, str] = {}
    for name, values in (request.args or {}).items():
        args[name.decode("utf-8")] = values[0].decode("utf-8")
    return args


class _Leaf(Resource):
    isLeaf = True

    def __init__(
        self, get: Callable[[Request], bytes] | None, post: Callable[[Request], bytes] | None
    ):
        super().__init__()
        self._get = get
        self._post = post

    def render_GET(self, request: Request) -> bytes:
        if self._get is None:
            request.setResponseCode(405)
            return b""
        return self._get(request)

    def render_POST(self, request: Request) -> bytes:
        if self._post is None:
            request.setResponseCode(405)
            return b""
        return self._post(request)


class FakeProvider(Resource):
    """
    A test OpenID provider serving, at the root of its issuer:
    C{/.well-known/openid-configuration}, C{/authorize} (approves at once,
    as if the user had signed in), C{/token}, C{/jwks} and C{/end-session}
    (no UserInfo endpoint).

    Knobs (plain attributes, change them between requests):

    @ivar claims: the claims of the user who signs in next (merged over
        C{iss}, C{aud}, C{exp}, C{iat} and C{auth_time}); taken at the
        authorization request, so a test can change them between sign-ins.
    @ivar users: claims by user name: an authorization request whose
        C{login_hint} names one signs that user in instead of L{claims}.
    @ivar step_up_claims: merged into the claims when the authorization
        request has C{acr_values} (and C{acr} set to the first value asked
        for); L{None} to ignore C{acr_values}.
    @ivar mode: one of L{MODES}: the kind of ID token the token endpoint
        issues next.
    @ivar token_error: C{(status, error, description)} to make the token
        endpoint refuse every request; L{None} to behave.
    @ivar authorize_error: C{(error, description)} to make the authorize
        endpoint redirect back with an error; L{None} to approve.
    @ivar send_iss: whether the authorize redirect carries C{iss} (RFC 9207).
    @ivar metadata_overrides: members replacing (or, with value L{None},
        removing) members of the discovery document.
    @ivar extra_jwks: raw entries appended to the JWKS (junk, C{oct} keys...).

    Observations:

    @ivar jwks_fetches: how many times C{/jwks} was fetched.
    @ivar discovery_fetches: how many times the discovery document was fetched.
    @ivar token_requests: the form of each token request (client secret
        removed), with C{"auth"} added: C{"client_secret_basic"},
        C{"client_secret_post"} or C{"none"}.
    @ivar authorizations: granted, unexchanged authorizations by code.
    @ivar last_authorize: the arguments of the last authorize request.
    """

    def __init__(
        self,
        *,
        issuer: str = "https://idp.test",
        client_id: str = "appproxy",
        client_secret: str = "s3cr:et/+%",
        redirect_uri: str = "https://login.example.com/.appproxy/callback",
        client_auth: str = "client_secret_basic",
        algorithm: str = "RS256",
        now: Callable[[], float] = time.time,
        token_lifetime: int = 300,
    ) -> None:
        super().__init__()
        if urlsplit(issuer).path not in ("", "/"):
            raise ValueError("the fake provider's issuer must have no path")
        self.issuer = issuer
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        #: The client authentication method the token endpoint accepts.
        self.client_auth = client_auth
        self.algorithm = algorithm
        self.now = now
        self.token_lifetime = token_lifetime

        self.claims: dict[str, object] = dict(DEFAULT_CLAIMS)
        self.users: dict[str, dict[str, object]] = {}
        self.step_up_claims: dict[str, object] | None = {"amr": ["pwd", "otp"]}
        self.mode = "good"
        self.token_error: tuple[int, str, str] | None = None
        self.authorize_error: tuple[str, str] | None = None
        self.send_iss = True
        self.metadata_overrides: dict[str, object] = {}
        self.extra_jwks: list[object] = []

        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.token_requests: list[dict[str, str]] = []
        self.authorizations: dict[str, Authorization] = {}
        self.last_authorize: dict[str, str] | None = None

        self._keys = [_SigningKey.generate(algorithm)]

        well_known = Resource()
        well_known.putChild(b"openid-configuration", _Leaf(self._discovery, None))
        self.putChild(b".well-known", well_known)
        self.putChild(b"authorize", _Leaf(self._authorize, None))
        self.putChild(b"token", _Leaf(None, self._token))
        self.putChild(b"jwks", _Leaf(self._jwks, None))
        self.putChild(b"end-session", _Leaf(lambda request: b"signed out", None))

    # -- keys

    @property
    def kid(self) -> str:
        """The key id tokens are signed with now."""
        return self._keys[-1].kid

    @property
    def kids(self) -> list[str]:
        """The key ids the JWKS publishes."""
        return [key.kid for key in self._keys]

    def rotate_keys(self, *, keep_old: bool = False) -> str:
        """
        Sign with a new key (new kid) from now on; unless C{keep_old}, the old
        keys leave the JWKS.  Returns the new kid.
        """
        key = _SigningKey.generate(self.algorithm)
        self._keys = [*self._keys, key] if keep_old else [key]
        return key.kid

    def jwks(self) -> dict[str, list[object]]:
        """The JWKS document the provider publishes."""
        return {"keys": [key.public_jwk() for key in self._keys] + list(self.extra_jwks)}

    # -- tokens

    def issue_id_token(
        self,
        nonce: str | None,
        *,
        mode: str | None = None,
        claims: Mapping[str, object] = {},
        user: Mapping[str, object] | None = None,
    ) -> str:
        """
        An ID token as the token endpoint would issue it now.

        @param nonce: the nonce of the authorization request.
        @param mode: overrides L{mode} for this token.
        @param claims: extra claims, over the user's.
        @param user: the user's claims (default: L{claims}).
        """
        mode = self.mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        now = int(self.now())
        payload: dict[str, object] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + self.token_lifetime,
            "auth_time": now,
            **(self.claims if user is None else user),
            **claims,
        }
        if nonce is not None:
            payload["nonce"] = nonce
        key = self._keys[-1]
        header: dict[str, object] = {"kid": key.kid, "typ": "JWT"}
        if mode == "wrong-iss":
            payload["iss"] = "https://evil.test"
        elif mode == "wrong-aud":
            payload["aud"] = "someone-else"
        elif mode == "wrong-azp":
            payload["aud"] = [self.client_id, "someone-else"]
            payload["azp"] = "someone-else"
        elif mode == "multiple-aud-no-azp":
            payload["aud"] = [self.client_id, "someone-else"]
        elif mode == "wrong-nonce":
            payload["nonce"] = "not-the-nonce"
        elif mode == "no-nonce":
            payload.pop("nonce", None)
        elif mode == "expired":
            payload["iat"] = now - 7200
            payload["exp"] = now - 3600
        elif mode == "future-iat":
            payload["iat"] = now + 3600
        elif mode == "future-nbf":
            payload["nbf"] = now + 3600
        elif mode == "missing-iat":
            del payload["iat"]
        elif mode == "no-sub":
            payload.pop("sub", None)
        elif mode == "unknown-kid":
            key = _SigningKey.generate(self.algorithm)
            header["kid"] = key.kid
        elif mode == "alg-none":
            header["alg"] = "none"
            return f"{_json_b64(header)}.{_json_b64(payload)}."
        elif mode == "hs256-public-key":
            # The classic confusion: a verifier that lets the token choose
            # HS256 and uses "the key" (the public key's PEM) as the secret.
            header["alg"] = "HS256"
            signing_input = f"{_json_b64(header)}.{_json_b64(payload)}"
            mac = hmac.new(self._keys[-1].public_pem(), signing_input.encode(), hashlib.sha256)
            return f"{signing_input}.{_b64(mac.digest())}"
        token = key.sign(header, payload)
        if mode == "bad-signature":
            head, _, signature = token.split(".")
            tampered = {**payload, "sub": "mallory"}
            return f"{head}.{_json_b64(tampered)}.{signature}"
        return token

    # -- endpoints

    def metadata(self) -> dict[str, object]:
        """The discovery document."""
        base = self.issuer.rstrip("/")
        document: dict[str, object] = {
            "issuer": self.issuer,
            "authorization_endpoint": base + "/authorize",
            "token_endpoint": base + "/token",
            "jwks_uri": base + "/jwks",
            "end_session_endpoint": base + "/end-session",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.algorithm],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [self.client_auth],
            "authorization_response_iss_parameter_supported": self.send_iss,
            "scopes_supported": ["openid", "profile", "email"],
        }
        for name, value in self.metadata_overrides.items():
            if value is None:
                document.pop(name, None)
            else:
                document[name] = value
        return document

    def _discovery(self, request: Request) -> bytes:
        self.discovery_fetches += 1
        return _json(request, self.metadata())

    def _jwks(self, request: Request) -> bytes:
        self.jwks_fetches += 1
        return _json(request, self.jwks())

    def authorize(self, args: Mapping[str, str]) -> tuple[int, str]:
        """
        Handle an authorization request given its query arguments.

        @return: C{(302, location)} back to the redirect URI, or
            C{(400, message)} for a request that must not be redirected.
        """
        self.last_authorize = dict(args)
        if args.get("client_id") != self.client_id:
            return 400, "unknown client_id"
        if args.get("redirect_uri") != self.redirect_uri:
            return 400, "redirect_uri is not registered"
        back: list[tuple[str, str]] = []
        if "state" in args:
            back.append(("state", args["state"]))
        if self.send_iss:
            back.append(("iss", self.issuer))
        if self.authorize_error is not None:
            error, description = self.authorize_error
            back += [("error", error), ("error_description", description)]
        elif args.get("response_type") != "code":
            back.append(("error", "unsupported_response_type"))
        elif "openid" not in args.get("scope", "").split():
            back.append(("error", "invalid_scope"))
        elif args.get("code_challenge_method") != "S256" or not args.get("code_challenge"):
            back += [("error", "invalid_request"), ("error_description", "PKCE S256 required")]
        else:
            code = secrets.token_urlsafe(24)
            self.authorizations[code] = Authorization(
                code=code,
                client_id=args["client_id"],
                redirect_uri=args["redirect_uri"],
                code_challenge=args["code_challenge"],
                nonce=args.get("nonce"),
                scope=args["scope"],
                claims=self._user_claims(args),
            )
            back.append(("code", code))
        parts = urlsplit(self.redirect_uri)
        query = "&".join(filter(None, [parts.query, urlencode(back)]))
        return 302, urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))

    def _user_claims(self, args: Mapping[str, str]) -> dict[str, object]:
        hint = args.get("login_hint")
        claims = dict(self.users[hint] if hint in self.users else self.claims)
        acr_values = args.get("acr_values", "").split()
        if acr_values and self.step_up_claims is not None:
            claims.update(self.step_up_claims)
            claims["acr"] = acr_values[0]
        return claims

    def authorize_url(self, url: str) -> str:
        """
        Follow an authorization URL as a browser would (the user approves):
        the URL it redirects back to.

        @raise ValueError: if the provider would not redirect.
        """
        status, location = self.authorize(dict(parse_qsl(urlsplit(url).query)))
        if status != 302:
            raise ValueError(location)
        return location

    def _authorize(self, request: Request) -> bytes:
        status, location = self.authorize(_args(request))
        request.setResponseCode(status)
        if status == 302:
            request.setHeader(b"Location", location.encode("ascii"))
            return b""
        return location.encode("utf-8")

    def _client_auth(self, request: Request, form: dict[str, str]) -> str | None:
        """The method the client authenticated with, or None if it did not."""
        raw = request.getHeader(b"authorization")
        if raw is not None:
            header = raw.decode("latin-1")
            if "client_secret" in form:
                return None  # two methods at once
            scheme, _, encoded = header.partition(" ")
            if scheme.lower() != "basic":
                return None
            try:
                decoded = base64.b64decode(encoded, validate=True).decode("ascii")
            except ValueError:
                return None
            user, _, password = decoded.partition(":")
            if (
                unquote_plus(user) == self.client_id
                and unquote_plus(password) == self.client_secret
            ):
                return "client_secret_basic"
            return None
        if (
            form.get("client_id") == self.client_id
            and form.get("client_secret") == self.client_secret
        ):
            return "client_secret_post"
        return None

    def _token(self, request: Request) -> bytes:
        form = _args(request)
        method = self._client_auth(request, form)
        recorded = {name: value for name, value in form.items() if name != "client_secret"}
        recorded["auth"] = method or "none"
        self.token_requests.append(recorded)
        if self.token_error is not None:
            status, error, description = self.token_error
            return _error(request, status, error, description)
        if method is None or method != self.client_auth:
            request.setHeader(b"WWW-Authenticate", b'Basic realm="fake"')
            return _error(request, 401, "invalid_client", "client authentication failed")
        if form.get("grant_type") != "authorization_code":
            return _error(request, 400, "unsupported_grant_type", "only authorization_code")
        authorization = self.authorizations.pop(form.get("code", ""), None)
        if authorization is None:
            return _error(request, 400, "invalid_grant", "unknown or used code")
        if form.get("redirect_uri") != authorization.redirect_uri:
            return _error(request, 400, "invalid_grant", "redirect_uri does not match")
        verifier = form.get("code_verifier", "")
        challenge = _b64(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
        if not verifier or not hmac.compare_digest(challenge, authorization.code_challenge):
            return _error(request, 400, "invalid_grant", "PKCE verification failed")
        return _json(
            request,
            {
                "access_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": 3600,
                "id_token": self.issue_id_token(authorization.nonce, user=authorization.claims),
            },
        )


class _TrackingSite(Site):
    """A Site that can wait for its open connections to be closed."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.noisy = False
        self.open: dict[object, Deferred[None]] = {}

    def buildProtocol(self, addr: object) -> Any:
        channel = super().buildProtocol(addr)
        lost: Deferred[None] = Deferred()
        self.open[channel] = lost
        original = channel.connectionLost

        def connectionLost(reason: object) -> None:
            original(reason)
            self.open.pop(channel, None)
            lost.callback(None)

        channel.connectionLost = connectionLost
        return channel

    def log(self, request: http.Request) -> None:
        """No access log."""


@attrs.define
class ServedProvider:
    """A L{FakeProvider} listening with TLS on 127.0.0.1."""

    provider: FakeProvider
    port: IListeningPort
    site: _TrackingSite
    #: The test CA that issued the server certificate (PEM).
    ca_pem: bytes

    @property
    def address(self) -> str:
        """C{127.0.0.1:PORT}: the C{provider_address} to reach it."""
        return f"127.0.0.1:{cast(IPv4Address, self.port.getHost()).port}"

    def settings(self, **overrides: Any) -> RelyingPartySettings:
        """Relying-party settings matching the provider (override any field)."""
        provider = self.provider
        values: dict[str, Any] = {
            "issuer": provider.issuer,
            "client_id": provider.client_id,
            "client_secret": provider.client_secret,
            "client_auth": provider.client_auth,
            "redirect_uri": provider.redirect_uri,
            "ca_pem": self.ca_pem,
            "provider_address": self.address,
            "timeout": 10.0,
        }
        values.update(overrides)
        return RelyingPartySettings(**values)

    def stop(self) -> Deferred[None]:
        """Stop listening and close the open connections; fires when all are gone."""
        stopped: list[Deferred[Any]] = [maybeDeferred(self.port.stopListening)]
        for channel, lost in list(self.site.open.items()):
            transport = getattr(channel, "transport", None)
            if transport is not None:
                transport.abortConnection()
            stopped.append(lost)
        return DeferredList(stopped).addCallback(lambda _: None)


def serve_tls(
    provider: FakeProvider, reactor: Any, *, ca: pki.KeyPair | None = None
) -> ServedProvider:
    """
    Serve C{provider} over TLS on 127.0.0.1 (a free port), with a server
    certificate for its issuer's host name from C{ca} (a new test CA if
    none).
    """
    ca = ca or pki.generate_ca("fake provider test CA")
    host = urlsplit(provider.issuer).hostname
    assert host is not None
    server = pki.issue_server_certificate(ca, [host])
    options = PrivateCertificate.loadPEM(server.cert_pem + server.key_pem).options()
    site = _TrackingSite(provider)
    port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
    return ServedProvider(provider=provider, port=port, site=site, ca_pem=ca.cert_pem)
