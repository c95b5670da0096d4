"""
The OpenID Connect relying party: appproxy signing users in at an identity
provider with the authorization code flow (PKCE, S256).

Pure parts (no reactor, no I/O), tested directly and with Hypothesis:
L{parse_metadata}, L{authorization_url}, L{check_authorization_response},
L{parse_jwks}, L{verify_id_token} and L{check_id_token_claims}.  PyJWT is used
for one thing only, the JWS signature; the header (algorithm, key choice) and
every claim are checked here.

Thin I/O around them: L{JwksCache} (the provider's signing keys, re-fetched at
most once per interval however many unknown key ids arrive) and
L{RelyingParty} (discovery, code exchange and verification over its own TLS
client, which trusts only the configured roots and can be pointed at a fixed
address).

Every failure is a L{SignInError} naming the step of the sign-in that failed
and a reason that is safe to show to the user: it never holds a token, a
code or a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Generic, TypeVar, cast
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

import attrs
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseDone
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

__all__ = [
    "CLIENT_AUTH_METHODS",
    "ID_TOKEN_ALGORITHMS",
    "MAX_RESPONSE_SIZE",
    "METADATA_MAX_AGE",
    "SIGN_IN_STEPS",
    "JwksCache",
    "ProviderMetadata",
    "RelyingParty",
    "RelyingPartySettings",
    "SignInError",
    "TokenResponse",
    "authorization_url",
    "check_authorization_response",
    "check_id_token_claims",
    "end_session_url",
    "new_pkce",
    "parse_jwks",
    "parse_metadata",
    "parse_provider_address",
    "parse_token_response",
    "verify_id_token",
]

_T = TypeVar("_T")

#: The steps of a sign-in, as named on error pages and in the sign-in log.
#: This module raises the first five.
SIGN_IN_STEPS = (
    "discovery",
    "authorization",
    "state",
    "token",
    "id-token",
    "assignment",
    "policy",
    "hand-off",
    "session",
)

CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post")

#: Discovery, JWKS and token responses larger than this are refused.
MAX_RESPONSE_SIZE = 1024 * 1024

#: How long a discovery document is used before it is fetched again (seconds).
METADATA_MAX_AGE = 3600.0

# Longest ID token accepted (a token with many groups can be large, but not
# this large).
_MAX_TOKEN_LENGTH = 64 * 1024
# Longest provider error text shown to users.
_MAX_DESCRIPTION = 200
_MIN_RSA_BITS = 2048


def _is_rsa(key: object) -> bool:
    return isinstance(key, rsa.RSAPublicKey) and key.key_size >= _MIN_RSA_BITS


def _is_ec(curve: type[ec.EllipticCurve]) -> Callable[[object], bool]:
    def check(key: object) -> bool:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, curve)

    return check


def _is_okp(key: object) -> bool:
    return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)


# Signature algorithms an ID token may use, with the JWK key type each needs
# and a check of the loaded public key.  Asymmetric only: never "none", never
# an HMAC (a provider's public key, which anyone can fetch, would be the
# "secret").
_ALGORITHMS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "RS256": ("RSA", _is_rsa),
    "RS384": ("RSA", _is_rsa),
    "RS512": ("RSA", _is_rsa),
    "PS256": ("RSA", _is_rsa),
    "PS384": ("RSA", _is_rsa),
    "PS512": ("RSA", _is_rsa),
    "ES256": ("EC", _is_ec(ec.SECP256R1)),
    "ES384": ("EC", _is_ec(ec.SECP384R1)),
    "ES512": ("EC", _is_ec(ec.SECP521R1)),
    "EdDSA": ("OKP", _is_okp),
}

#: The signature algorithms appproxy can accept for ID tokens.
ID_TOKEN_ALGORITHMS: tuple[str, ...] = tuple(_ALGORITHMS)

_log = Logger()


class SignInError(Exception):
    """
    A sign-in failed.

    @ivar step: which step failed: C{"discovery"}, C{"authorization"},
        C{"state"}, C{"token"} or C{"id-token"} (see L{SIGN_IN_STEPS}).
    @ivar reason: one sentence, safe to show to the user and to log: it never
        holds a token, a code or a secret.
    """

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(step, reason)
        self.step = step
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.step}: {self.reason}"


# --- settings and provider metadata -----------------------------------------


def _is_https_url(value: object, *, query: bool = True) -> bool:
    """An absolute https URL with a host, without userinfo or fragment."""
    if not isinstance(value, str) or not value.isascii():
        return False
    if any(char <= " " or char == "\x7f" for char in value) or "#" in value:
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return False
    if not query and (parts.query or "?" in value):
        return False
    return parts.scheme == "https" and bool(parts.hostname) and "@" not in parts.netloc


def parse_provider_address(value: str) -> tuple[str, int | None]:
    """
    Parse a C{provider_address}: C{host}, C{host:port}, C{IPv4[:port]},
    C{[IPv6][:port]} or a bare C{IPv6}.

    @return: the host (an IPv6 address without brackets) and the port, or
        L{None} to use the port of the URL being fetched.

    @raise ValueError: if C{value} is not of one of those forms.
    """
    port_text = ""
    if value.startswith("["):
        host, close, rest = value[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not [IPv6] or [IPv6]:port")
        port_text = rest[1:] if rest else ""
        if rest and not port_text:
            raise ValueError(f"{value!r} has an empty port")
        ipaddress.IPv6Address(host)
    elif value.count(":") > 1:
        host = value
        ipaddress.IPv6Address(host)
    else:
        host, colon, port_text = value.partition(":")
        if colon and not port_text:
            raise ValueError(f"{value!r} has an empty port")
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host):
            raise ValueError(f"{value!r} is not a host name or address")
    if not port_text:
        return host, None
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} has an invalid port")
    return host, int(port_text)


def _check_https_url(name: str) -> Callable[[object, attrs.Attribute[str], str], None]:
    def check(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
        if not _is_https_url(value, query=False):
            raise ValueError(f"{name} must be an https URL without query or fragment: {value!r}")

    return check


def _check_algorithms(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if not value:
        raise ValueError("algorithms must name at least one algorithm")
    for algorithm in value:
        if algorithm not in _ALGORITHMS:
            raise ValueError(
                f"ID token algorithm {algorithm!r} is not allowed (asymmetric signatures only:"
                f" {', '.join(_ALGORITHMS)})"
            )


def _check_scopes(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if "openid" not in value:
        raise ValueError("scopes must include 'openid'")
    for scope in value:
        if not scope or not all("!" <= char <= "~" and char not in '"\\' for char in scope):
            raise ValueError(f"{scope!r} is not a valid scope")


def _check_provider_address(
    instance: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None:
        parse_provider_address(value)


def _check_ca_pem(
    instance: object, attribute: attrs.Attribute[bytes | None], value: bytes | None
) -> None:
    if value is not None and not x509.load_pem_x509_certificates(value):
        raise ValueError("ca_pem holds no certificate")


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError("a list of strings is expected, not a string")
    return tuple(values)


def _check_non_empty(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must not be empty")


@attrs.frozen(kw_only=True)
class RelyingPartySettings:
    """
    How appproxy signs users in at one provider.

    @ivar issuer: the provider's issuer identifier, exactly as the provider
        states it (C{https://login.example.com}, maybe with a path).
    @ivar client_id: appproxy's client id at the provider.
    @ivar client_secret: its client secret (never shown in C{repr}).
    @ivar client_auth: how the secret is presented to the token endpoint:
        C{"client_secret_basic"} (HTTP Basic) or C{"client_secret_post"}
        (in the form body).
    @ivar redirect_uri: the callback URL registered at the provider.
    @ivar scopes: the scopes asked for; must include C{openid}.
    @ivar algorithms: the ID-token signature algorithms accepted (a subset of
        L{ID_TOKEN_ALGORITHMS}: never C{none}, never an HMAC).
    @ivar clock_skew: seconds of clock difference tolerated in C{exp},
        C{iat}, C{nbf} and C{auth_time}.
    @ivar ca_pem: extra trust roots (PEM) for the provider's TLS certificate;
        L{None} for the system's trust store.
    @ivar provider_address: connect here (C{host}, C{IPv4}, C{[IPv6]},
        optionally C{:port}) instead of resolving the issuer's host name; TLS
        still verifies the URL's host name.
    @ivar timeout: seconds allowed for each request to the provider,
        connecting and reading the response included.
    """

    issuer: str = attrs.field(validator=_check_https_url("issuer"))
    client_id: str = attrs.field(validator=_check_non_empty)
    client_secret: str = attrs.field(repr=False, validator=_check_non_empty)
    client_auth: str = attrs.field(
        default="client_secret_basic", validator=attrs.validators.in_(CLIENT_AUTH_METHODS)
    )
    redirect_uri: str = attrs.field(validator=_check_https_url("redirect_uri"))
    scopes: tuple[str, ...] = attrs.field(
        default=("openid", "profile", "email"), converter=_strings, validator=_check_scopes
    )
    algorithms: tuple[str, ...] = attrs.field(
        default=("RS256", "PS256", "ES256"), converter=_strings, validator=_check_algorithms
    )
    clock_skew: int = attrs.field(default=60, validator=attrs.validators.ge(0))
    ca_pem: bytes | None = attrs.field(default=None, repr=False, validator=_check_ca_pem)
    provider_address: str | None = attrs.field(default=None, validator=_check_provider_address)
    timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))


@attrs.frozen(kw_only=True)
class ProviderMetadata:
    """
    What appproxy uses of a provider's discovery document
    (C{/.well-known/openid-configuration}).

    @ivar issuer: the provider's issuer, equal to the configured one.
    @ivar authorization_endpoint: where the browser is sent to sign in.
    @ivar token_endpoint: where the code is exchanged for tokens.
    @ivar jwks_uri: the provider's signing keys.
    @ivar userinfo_endpoint: the UserInfo endpoint, if any.
    @ivar end_session_endpoint: RP-initiated logout, if supported.
    @ivar code_challenge_methods_supported: as advertised; L{None} if the
        document does not say (if it does, it includes C{S256}).
    @ivar token_endpoint_auth_methods_supported: as advertised (the
        default, per the specification, is C{client_secret_basic}).
    @ivar id_token_signing_alg_values_supported: as advertised.
    @ivar authorization_response_iss_parameter_supported: the provider adds
        C{iss} to authorization responses (RFC 9207), so its absence is an
        error.
    """

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    end_session_endpoint: str | None = None
    code_challenge_methods_supported: tuple[str, ...] | None = None
    token_endpoint_auth_methods_supported: tuple[str, ...] = ("client_secret_basic",)
    id_token_signing_alg_values_supported: tuple[str, ...] = ()
    authorization_response_iss_parameter_supported: bool = False


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _json_object(document: bytes | str) -> dict[str, Any] | None:
    """
    Parse a strict JSON object (no NaN or Infinity, no duplicate members);
    L{None} if C{document} is anything else.
    """
    try:
        value = json.loads(
            document, parse_constant=_refuse_constant, object_pairs_hook=_unique_object
        )
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _string_list(
    document: Mapping[str, Any], name: str, default: tuple[str, ...] | None
) -> tuple[str, ...] | None:
    if name not in document:
        return default
    value = document[name]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SignInError(
            "discovery", f"The provider's discovery document has an invalid {name} (not a list)"
        )
    return tuple(value)


def parse_metadata(document: bytes, issuer: str) -> ProviderMetadata:
    """
    Parse and check a provider's discovery document.

    @param document: the document as fetched.
    @param issuer: the configured issuer; the document's C{issuer} must be
        exactly equal to it.

    @raise SignInError: (step C{"discovery"}) if the document is not a JSON
        object, names another issuer, lacks an https C{authorization_endpoint},
        C{token_endpoint} or C{jwks_uri}, has an optional endpoint that is not
        https, a malformed list or flag, or advertises PKCE methods without
        C{S256}.
    """
    metadata = _json_object(document)
    if metadata is None:
        raise SignInError("discovery", "The provider's discovery document is not a JSON object")
    if metadata.get("issuer") != issuer:
        raise SignInError(
            "discovery",
            "The provider's discovery document names a different issuer than the one configured"
            " (issuer)",
        )
    endpoints: dict[str, str | None] = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not _is_https_url(metadata.get(name)):
            raise SignInError(
                "discovery", f"The provider's discovery document has no valid https {name}"
            )
        endpoints[name] = metadata[name]
    for name in ("userinfo_endpoint", "end_session_endpoint"):
        value = metadata.get(name)
        if value is not None and not _is_https_url(value):
            raise SignInError(
                "discovery", f"The provider's discovery document has an invalid {name}"
            )
        endpoints[name] = value
    pkce = _string_list(metadata, "code_challenge_methods_supported", None)
    if pkce is not None and "S256" not in pkce:
        raise SignInError(
            "discovery",
            "The provider does not support PKCE with S256 (code_challenge_methods_supported)",
        )
    iss_parameter = metadata.get("authorization_response_iss_parameter_supported", False)
    if not isinstance(iss_parameter, bool):
        raise SignInError(
            "discovery",
            "The provider's discovery document has an invalid"
            " authorization_response_iss_parameter_supported",
        )
    auth_methods = _string_list(
        metadata, "token_endpoint_auth_methods_supported", ("client_secret_basic",)
    )
    algorithms = _string_list(metadata, "id_token_signing_alg_values_supported", ())
    assert auth_methods is not None and algorithms is not None
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=metadata["authorization_endpoint"],
        token_endpoint=metadata["token_endpoint"],
        jwks_uri=metadata["jwks_uri"],
        userinfo_endpoint=endpoints["userinfo_endpoint"],
        end_session_endpoint=endpoints["end_session_endpoint"],
        code_challenge_methods_supported=pkce,
        token_endpoint_auth_methods_supported=auth_methods,
        id_token_signing_alg_values_supported=algorithms,
        authorization_response_iss_parameter_supported=iss_parameter,
    )


# --- the authorization request and response ---------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_pkce() -> tuple[str, str]:
    """
    A new PKCE pair (RFC 7636).

    @return: C{(code_verifier, code_challenge)}: the verifier is 64
        random URL-safe characters; the challenge is its S256 transform.
    """
    verifier = secrets.token_urlsafe(48)
    return verifier, _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _with_query(url: str, parameters: Sequence[tuple[str, str]]) -> str:
    """C{url} with C{parameters} appended to whatever query it already has."""
    parts = urlsplit(url)
    existing = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([*existing, *parameters], quote_via=quote)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def authorization_url(
    metadata: ProviderMetadata,
    settings: RelyingPartySettings,
    *,
    state: str,
    nonce: str,
    code_challenge: str,
    prompt: str | None = None,
    acr_values: str | None = None,
    max_age: int | None = None,
    login_hint: str | None = None,
) -> str:
    """
    The URL to send the browser to: an authorization code request with PKCE
    (C{S256}) and C{response_mode=query}.

    @param prompt: e.g. C{"login"} to force the user to sign in again.
    @param acr_values: the authentication context asked for (step-up).
    @param max_age: the longest time since the user last signed in at the
        provider (seconds); check it with L{verify_id_token}'s C{max_age}.
    @param login_hint: the user name to suggest.
    """
    parameters = [
        ("response_type", "code"),
        ("response_mode", "query"),
        ("client_id", settings.client_id),
        ("redirect_uri", settings.redirect_uri),
        ("scope", " ".join(settings.scopes)),
        ("state", state),
        ("nonce", nonce),
        ("code_challenge", code_challenge),
        ("code_challenge_method", "S256"),
    ]
    if prompt is not None:
        parameters.append(("prompt", prompt))
    if acr_values is not None:
        parameters.append(("acr_values", acr_values))
    if max_age is not None:
        if max_age < 0:
            raise ValueError("max_age must not be negative")
        parameters.append(("max_age", str(max_age)))
    if login_hint is not None:
        parameters.append(("login_hint", login_hint))
    return _with_query(metadata.authorization_endpoint, parameters)


def _equal(a: str, b: str) -> bool:
    """Compare two strings in constant time."""
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


# RFC 6749 section 5.2: error codes are made of these characters.
_ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}\Z")


def _provider_text(text: object) -> str:
    """
    Text from the provider (or from whoever crafted the URL) made safe to
    quote: printable ASCII only, at most L{_MAX_DESCRIPTION} characters.
    """
    if not isinstance(text, str):
        return ""
    cleaned = "".join(char if " " <= char <= "~" else "?" for char in text)
    if len(cleaned) > _MAX_DESCRIPTION:
        cleaned = cleaned[: _MAX_DESCRIPTION - 3] + "..."
    return cleaned


def _provider_error(error: object, description: object) -> str:
    code = error if isinstance(error, str) and _ERROR_CODE.match(error) else "unknown error"
    text = _provider_text(description)
    return f"{code} ({text})" if text else code


def check_authorization_response(
    args: Mapping[str, str], *, expected_state: str, metadata: ProviderMetadata
) -> str:
    """
    Check the provider's redirect back to the callback and return the code.

    The state is checked first (so that an error response is only believed
    when it belongs to this sign-in), then the issuer (RFC 9207: C{iss}, if
    present, must be the configured issuer; it must be present if the
    provider advertises it), then the provider's error, if any.

    @param args: the callback's query parameters (one value each).
    @param expected_state: the state sent with the authorization request.

    @raise SignInError: step C{"state"} if the state is missing or does not
        match; step C{"authorization"} if the response comes from another
        issuer, carries the provider's error, or no code.
    """
    state = args.get("state")
    if not state or not _equal(state, expected_state):
        raise SignInError(
            "state", "The sign-in response does not belong to this sign-in (state mismatch)"
        )
    iss = args.get("iss")
    if iss is not None:
        if iss != metadata.issuer:
            raise SignInError(
                "authorization",
                "The sign-in response came from a different identity provider (iss)",
            )
    elif metadata.authorization_response_iss_parameter_supported:
        raise SignInError(
            "authorization", "The sign-in response does not name its identity provider (iss)"
        )
    if "error" in args:
        raise SignInError(
            "authorization",
            "The identity provider refused the sign-in: "
            + _provider_error(args["error"], args.get("error_description")),
        )
    code = args.get("code")
    if not code or len(code) > 4096 or not all(" " < char <= "~" for char in code):
        raise SignInError("authorization", "The identity provider sent no valid sign-in code")
    return code


def end_session_url(
    metadata: ProviderMetadata,
    settings: RelyingPartySettings,
    *,
    id_token_hint: str | None,
    post_logout_redirect_uri: str | None,
) -> str | None:
    """
    The provider's RP-initiated logout URL, or L{None} if the provider does
    not support it.
    """
    if metadata.end_session_endpoint is None:
        return None
    parameters = [("client_id", settings.client_id)]
    if id_token_hint is not None:
        parameters.append(("id_token_hint", id_token_hint))
    if post_logout_redirect_uri is not None:
        parameters.append(("post_logout_redirect_uri", post_logout_redirect_uri))
    return _with_query(metadata.end_session_endpoint, parameters)


# --- keys and ID tokens ------------------------------------------------------


def parse_jwks(document: bytes) -> tuple[dict[str, jwt.PyJWK], list[str]]:
    """
    Load the usable signing keys from a JWK Set document.

    Skipped (with a reason each): entries that are not objects, symmetric
    (C{oct}) keys, keys of other types or for other algorithms, private keys,
    keys PyJWT cannot load, RSA keys shorter than 2048 bits.

    @return: the keys, indexed by their C{kid}; a key without a C{kid}, or
        with a C{kid} already taken, is indexed by a placeholder (C{#N},
        C{kid#N}): match keys by L{jwt.PyJWK.key_id}, never by index.  And the
        reasons entries were skipped.

    @raise ValueError: if the document is not a JSON object with a C{keys}
        list.
    """
    jwks = _json_object(document)
    if jwks is None or not isinstance(jwks.get("keys"), list):
        raise ValueError("the JWKS document is not a JSON object with a 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    skipped: list[str] = []
    for index, entry in enumerate(jwks["keys"]):
        if not isinstance(entry, dict):
            skipped.append(f"key {index}: not a JSON object")
            continue
        kid = entry.get("kid")
        label = f"key {index} (kid {kid!r})" if isinstance(kid, str) else f"key {index}"
        kty = entry.get("kty")
        if kty == "oct":
            skipped.append(f"{label}: symmetric keys are never used")
            continue
        if kty not in ("RSA", "EC", "OKP"):
            skipped.append(f"{label}: unsupported key type {kty!r}")
            continue
        if "d" in entry:
            skipped.append(f"{label}: a private key has no place in a JWKS")
            continue
        if kid is not None and not isinstance(kid, str):
            skipped.append(f"{label}: kid is not a string")
            continue
        alg = entry.get("alg")
        if alg is not None and alg not in _ALGORITHMS:
            skipped.append(f"{label}: algorithm {alg!r} is not a signature algorithm we accept")
            continue
        try:
            key = jwt.PyJWK(entry)
        except Exception as error:  # PyJWT raises several types for bad input.
            skipped.append(f"{label}: cannot be loaded ({type(error).__name__})")
            continue
        if not any(check(key.key) for _, check in _ALGORITHMS.values()):
            skipped.append(f"{label}: not a usable public key (too short, or unknown curve)")
            continue
        name = kid if isinstance(kid, str) and kid not in keys else f"{kid or ''}#{index}"
        keys[name] = key
    return keys, skipped


def _token_error(reason: str) -> SignInError:
    return SignInError("id-token", reason)


def _b64url_decode(segment: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _token_header(raw: str) -> dict[str, Any]:
    """The (unverified) JOSE header of a compact JWS."""
    if not isinstance(raw, str) or len(raw) > _MAX_TOKEN_LENGTH or not raw.isascii():
        raise _token_error("The ID token is malformed")
    segments = raw.split(".")
    if len(segments) == 5:
        raise _token_error("The ID token is encrypted, which this service does not support")
    if len(segments) != 3:
        raise _token_error("The ID token is malformed")
    try:
        header = _json_object(_b64url_decode(segments[0]))
    except ValueError:
        header = None
    if header is None:
        raise _token_error("The ID token's header is malformed")
    return header


def _key_problem(key: jwt.PyJWK, alg: str) -> str | None:
    """Why C{key} cannot verify a signature made with C{alg}; L{None} if it can."""
    kty, check = _ALGORITHMS[alg]
    data = key._jwk_data
    if key.key_type != kty or not check(key.key):
        return "The ID token's key is of the wrong type for its algorithm (kty)"
    if "alg" in data and data["alg"] != alg:
        return "The ID token's algorithm is not the one its key is for (alg)"
    if "use" in data and data["use"] != "sig":
        return "The ID token's key is not a signing key (use)"
    key_ops = data.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return "The ID token's key may not be used to verify signatures (key_ops)"
    return None


def _choose_key(keys: Mapping[str, jwt.PyJWK], kid: object, alg: str) -> jwt.PyJWK:
    if kid is not None:
        if not isinstance(kid, str):
            raise _token_error("The ID token's key id is malformed (kid)")
        candidates = [key for key in keys.values() if key.key_id == kid]
        if not candidates:
            raise _token_error(
                "The ID token is signed with a key the provider does not publish (kid)"
            )
        problems = [_key_problem(key, alg) for key in candidates]
        for key, problem in zip(candidates, problems, strict=True):
            if problem is None:
                return key
        raise _token_error(problems[0] or "")
    usable = [key for key in keys.values() if _key_problem(key, alg) is None]
    if len(usable) == 1:
        return usable[0]
    if not usable:
        raise _token_error("The provider publishes no key for the ID token's algorithm (alg)")
    raise _token_error("The ID token names no key (kid) and the provider publishes several")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def check_id_token_claims(
    claims: Mapping[str, object],
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    now: int,
    clock_skew: int,
    max_age: int | None = None,
) -> None:
    """
    Check an ID token's claims (OpenID Connect Core 3.1.3.7).

    C{iss} is C{issuer}; C{aud} (a string or a list) contains C{client_id};
    if there are several audiences or an C{azp}, C{azp} is C{client_id};
    C{exp} is later than C{now - clock_skew}; C{iat} is present and no later
    than C{now + clock_skew}; C{nbf}, if present, is no later than
    C{now + clock_skew}; C{nonce} is C{nonce}; C{sub} is a non-empty string;
    with C{max_age}, C{auth_time} is present and recent enough.

    @raise SignInError: (step C{"id-token"}) naming the first claim that fails.
    """
    if claims.get("iss") != issuer:
        raise _token_error("The ID token was issued by a different identity provider (iss)")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise _token_error("The ID token's audience is malformed (aud)")
    if client_id not in audiences:
        raise _token_error("The ID token's audience is not this service (aud)")
    if (len(audiences) > 1 or "azp" in claims) and claims.get("azp") != client_id:
        raise _token_error("The ID token was issued to a different client (azp)")
    exp = _number(claims.get("exp"))
    if exp is None:
        raise _token_error("The ID token has no valid expiry time (exp)")
    if exp <= now - clock_skew:
        raise _token_error("The ID token has expired (exp)")
    iat = _number(claims.get("iat"))
    if iat is None:
        raise _token_error("The ID token has no valid issue time (iat)")
    if iat > now + clock_skew:
        raise _token_error("The ID token was issued in the future (iat): check the clocks")
    if "nbf" in claims:
        nbf = _number(claims["nbf"])
        if nbf is None:
            raise _token_error("The ID token's not-before time is malformed (nbf)")
        if nbf > now + clock_skew:
            raise _token_error("The ID token is not valid yet (nbf): check the clocks")
    token_nonce = claims.get("nonce")
    if not isinstance(token_nonce, str) or not _equal(token_nonce, nonce):
        raise _token_error("The ID token does not belong to this sign-in (nonce)")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _token_error("The ID token names no user (sub)")
    if max_age is not None or "auth_time" in claims:
        auth_time = _number(claims.get("auth_time"))
        if auth_time is None:
            raise _token_error("The ID token has no valid sign-in time (auth_time)")
        if max_age is not None and auth_time < now - max_age - clock_skew:
            raise _token_error("The sign-in at the identity provider is too old (auth_time)")


def verify_id_token(
    raw: str,
    *,
    keys: Mapping[str, jwt.PyJWK],
    settings: RelyingPartySettings,
    metadata: ProviderMetadata,
    nonce: str,
    now: int,
    max_age: int | None = None,
) -> dict[str, Any]:
    """
    Verify an ID token's signature and claims; return the claims.

    The header is read first: C{alg} must be one of C{settings.algorithms}
    (never C{none}, never an HMAC, whatever the settings say), C{crit} is
    refused, and the key is chosen by C{kid} (without one, the only key that
    fits the algorithm).  The key's type must fit the algorithm, its C{alg}
    (if any) must be the header's, its C{use} (if any) C{sig}.  PyJWT then
    checks the signature with that key and that algorithm only.  Then the
    claims: see L{check_id_token_claims}.

    @param keys: the provider's keys (see L{parse_jwks}).
    @param now: the current POSIX time.
    @param max_age: if the authorization request had C{max_age}, the same.

    @raise SignInError: (step C{"id-token"}) with the reason.
    """
    header = _token_header(raw)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _ALGORITHMS or alg not in settings.algorithms:
        raise _token_error("The ID token is signed with an algorithm that is not allowed (alg)")
    if "crit" in header:
        raise _token_error("The ID token uses header extensions this service does not know (crit)")
    key = _choose_key(keys, header.get("kid"), alg)
    try:
        decoded = jwt.api_jws.PyJWS(algorithms=[alg]).decode_complete(
            raw, key=key.key, algorithms=[alg]
        )
    except jwt.InvalidSignatureError:
        raise _token_error("The ID token's signature is not valid") from None
    except jwt.PyJWTError:
        raise _token_error("The ID token is malformed") from None
    claims = _json_object(decoded["payload"])
    if claims is None:
        raise _token_error("The ID token's claims are malformed")
    check_id_token_claims(
        claims,
        issuer=metadata.issuer,
        client_id=settings.client_id,
        nonce=nonce,
        now=now,
        clock_skew=settings.clock_skew,
        max_age=max_age,
    )
    return claims


# --- I/O ---------------------------------------------------------------------


class _SharedCall(Generic[_T]):
    """
    Run an asynchronous operation for many callers at once: callers that
    arrive while it runs share its outcome.  A waiter that is cancelled
    simply stops waiting.
    """

    def __init__(self, operation: Callable[[], Deferred[_T]]) -> None:
        self._operation = operation
        self._waiters: list[Deferred[_T]] | None = None

    @property
    def running(self) -> bool:
        return self._waiters is not None

    def __call__(self) -> Deferred[_T]:
        waiter: Deferred[_T] = Deferred(self._forget)
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        maybeDeferred(self._operation).addBoth(self._finished)
        return waiter

    def _forget(self, waiter: Deferred[_T]) -> None:
        if self._waiters is not None and waiter in self._waiters:
            self._waiters.remove(waiter)

    def _finished(self, result: _T | Failure) -> None:
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        # A failure nobody waits for any more (all cancelled) is dropped.


def _keys_unavailable() -> SignInError:
    return SignInError("id-token", "The identity provider's signing keys could not be fetched")


class JwksCache:
    """
    A provider's signing keys, fetched when needed.

    Keys are served from the cache while they are younger than C{max_age}
    and know the C{kid} asked for.  An unknown C{kid} triggers a re-fetch
    (the provider may have rotated its keys), but at most one fetch starts
    per C{min_refetch_interval}: a flood of tokens with made-up key ids must
    not become a flood of requests to the provider.  Callers that arrive
    during a fetch share it.  If a re-fetch fails, the old keys are used.
    """

    _log = Logger()

    def __init__(
        self,
        fetch: Callable[[], Deferred[bytes]],
        clock: IReactorTime,
        min_refetch_interval: float = 30.0,
        max_age: float = 3600.0,
    ) -> None:
        """
        @param fetch: fetches the JWKS document.
        @param clock: the time source.
        @param min_refetch_interval: the least time between the starts of
            two fetches (seconds).
        @param max_age: how long fetched keys are used before being
            fetched again (seconds).
        """
        self._fetch = fetch
        self._clock = clock
        self._min_refetch_interval = min_refetch_interval
        self._max_age = max_age
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._refresh: _SharedCall[dict[str, jwt.PyJWK]] = _SharedCall(self._load)
        #: How many fetches were started.
        self.fetches = 0

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


@attrs.frozen(kw_only=True)
class TokenResponse:
    """
    What the token endpoint returned for a code.

    @ivar id_token: the ID token (not yet verified: see L{RelyingParty.verify}).
    @ivar access_token: the access token, if any.
    @ivar expires_in: the access token's lifetime in seconds, if given.
    """

    id_token: str = attrs.field(repr=False)
    access_token: str | None = attrs.field(default=None, repr=False)
    expires_in: int | None = None


def parse_token_response(code: int, body: bytes) -> TokenResponse:
    """
    Interpret the token endpoint's answer.

    @param code: the HTTP status.
    @param body: the response body.

    @raise SignInError: (step C{"token"}) if the provider refused (its
        C{error} and a cleaned C{error_description} are in the reason), or
        the response is not a JSON object with a string C{id_token}.
    """
    document = _json_object(body)
    if code != 200:
        if document is not None and "error" in document:
            raise SignInError(
                "token",
                "The identity provider refused to exchange the sign-in code: "
                + _provider_error(document["error"], document.get("error_description")),
            )
        raise SignInError(
            "token", f"The identity provider's token endpoint answered with HTTP status {code}"
        )
    if document is None:
        raise SignInError("token", "The identity provider's token response is not a JSON object")
    id_token = document.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise SignInError("token", "The identity provider's token response has no ID token")
    access_token = document.get("access_token")
    expires_in = document.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit() and len(expires_in) < 10:
        # Some providers send it as a string.
        expires_in = int(expires_in)
    return TokenResponse(
        id_token=id_token,
        access_token=access_token if isinstance(access_token, str) and access_token else None,
        expires_in=(
            expires_in
            if isinstance(expires_in, int) and not isinstance(expires_in, bool) and expires_in >= 0
            else None
        ),
    )


def _basic_credentials(client_id: str, client_secret: str) -> bytes:
    """
    An HTTP Basic C{Authorization} value for a client (RFC 6749 section
    2.3.1: both parts form-urlencoded before being joined and encoded).
    """
    user_pass = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return b"Basic " + base64.b64encode(user_pass.encode("ascii"))


class _ResponseTooLarge(Exception):
    """A provider's response exceeded L{MAX_RESPONSE_SIZE}."""


class _CappedBody(Protocol):
    """Collect a response body, giving up (and closing the connection) past a size."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._chunks: list[bytes] = []
        self.finished: Deferred[bytes] = Deferred(self._stop)

    def _stop(self, finished: Deferred[bytes]) -> None:
        if self.transport is not None:
            cast(Any, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._chunks = []
            if self.transport is not None:
                cast(Any, self.transport).stopProducing()
            self.finished.errback(_ResponseTooLarge())
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(reason)


def _read_body(response: IResponse, limit: int) -> Deferred[bytes]:
    length = response.length
    # A declared length over the limit fails at the first byte.
    body = _CappedBody(-1 if isinstance(length, int) and length > limit else limit)
    response.deliverBody(body)
    return body.finished


@implementer(IAgentEndpointFactory)
class _ProviderEndpoints:
    """
    Endpoints for the provider's URLs: https only, TLS verified against the
    URL's host name with the configured trust roots, and for the issuer's
    host, connected to C{provider_address} if one is configured.
    """

    def __init__(self, reactor: Any, settings: RelyingPartySettings, trust: Any) -> None:
        self._reactor = reactor
        issuer = urlsplit(settings.issuer)
        self._issuer_host = (issuer.hostname or "").lower()
        self._issuer_port = issuer.port or 443
        self._address = (
            None
            if settings.provider_address is None
            else parse_provider_address(settings.provider_address)
        )
        self._trust = trust
        self._timeout = settings.timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme != b"https":
            raise SchemeNotSupported(f"the provider is reached by https only, not {uri.scheme!r}")
        host = uri.host.decode("ascii").lower()
        connect_host, connect_port = host, uri.port
        if self._address is not None and host == self._issuer_host:
            address_host, address_port = self._address
            connect_host = address_host
            if address_port is not None and uri.port == self._issuer_port:
                connect_port = address_port
        tls = optionsForClientTLS(
            host,
            trustRoot=self._trust,
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
        )
        return wrapClientTLS(
            tls,
            HostnameEndpoint(self._reactor, connect_host, connect_port, timeout=self._timeout),
        )


def _trust_root(ca_pem: bytes | None) -> Any:
    if ca_pem is None:
        return platformTrust()
    certificates = [
        Certificate.loadPEM(certificate.public_bytes(Encoding.PEM))
        for certificate in x509.load_pem_x509_certificates(ca_pem)
    ]
    return trustRootFromCertificates(certificates)


class RelyingParty:
    """
    appproxy as the relying party of one OpenID provider: discovery, the
    code exchange, ID-token verification, sign-out URLs.

    Requests go through its own HTTP client: https only, the provider's
    certificate verified against C{settings.ca_pem} (or the system's trust
    store), C{settings.provider_address} honoured, redirects not followed,
    no cookies kept, each request limited to C{settings.timeout} seconds and
    its response to L{MAX_RESPONSE_SIZE}.  Call L{close} when done with it.
    """

    _log = Logger()

    def __init__(
        self,
        settings: RelyingPartySettings,
        *,
        clock: IReactorTime,
        reactor: Any,
        http: Any = None,
        jwks_refetch_interval: float = 30.0,
    ) -> None:
        """
        @param settings: the provider and how to reach it.
        @param clock: the time source (token times, caches, timeouts).
        @param reactor: the reactor to connect with (C{IReactorTCP} and
            C{IReactorTime}).
        @param http: an HTTP client with treq's C{request} method to use
            instead of building one (for tests: C{treq.testing.StubTreq}).
        @param jwks_refetch_interval: the least time between two fetches of
            the provider's keys (see L{JwksCache}).
        """
        self.settings = settings
        self._clock = clock
        self._pool: HTTPConnectionPool | None = None
        if http is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            agent = Agent.usingEndpointFactory(
                reactor,
                _ProviderEndpoints(reactor, settings, _trust_root(settings.ca_pem)),
                pool=self._pool,
            )
            # No cookies: a provider's cookies have no business in a back channel.
            no_cookies = IndexableCookieJar(DefaultCookiePolicy(allowed_domains=[]))
            http = HTTPClient(agent, cookiejar=no_cookies)
        self._http = http
        self._metadata: ProviderMetadata | None = None
        self._metadata_at: float | None = None
        self._discover: _SharedCall[ProviderMetadata] = _SharedCall(self._fetch_metadata)
        #: The provider's signing keys.
        self.jwks = JwksCache(self._fetch_jwks, clock, min_refetch_interval=jwks_refetch_interval)

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

        async def request() -> tuple[int, bytes]:
            response = await self._http.request(
                method, url, allow_redirects=False, unbuffered=True, **kwargs
            )
            body = await _read_body(response, MAX_RESPONSE_SIZE)
            return response.code, body

        def failed(failure: Failure) -> Failure:
            if failure.check(_ResponseTooLarge):
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

    def _fetch_metadata(self) -> Deferred[ProviderMetadata]:
        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"

        def parse(result: tuple[int, bytes]) -> ProviderMetadata:
            code, body = result
            if code != 200:
                raise SignInError(
                    "discovery",
                    f"The identity provider's discovery document answered HTTP status {code}",
                )
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
            self._request("discovery", "discovery document", "GET", url, headers=_ACCEPT_JSON)
            .addCallback(parse)
            .addErrback(stale)
        )

    def _fetch_jwks(self) -> Deferred[bytes]:
        def fetch(metadata: ProviderMetadata) -> Deferred[tuple[int, bytes]]:
            return self._request(
                "id-token", "signing keys", "GET", metadata.jwks_uri, headers=_ACCEPT_JSON
            )

        def check(result: tuple[int, bytes]) -> bytes:
            code, body = result
            if code != 200:
                raise SignInError(
                    "id-token",
                    f"The identity provider's signing keys answered HTTP status {code}",
                )
            return body

        return self.metadata().addCallback(fetch).addCallback(check)

    # -- the code exchange

    def exchange_code(self, code: str, verifier: str) -> Deferred[TokenResponse]:
        """
        Exchange an authorization code (and its PKCE verifier) for tokens.

        @return: fails with L{SignInError}: step C{"token"} if the provider
            refuses or cannot be reached, C{"discovery"} if its metadata
            cannot be had.
        """
        form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.settings.redirect_uri),
            ("code_verifier", verifier),
        ]
        headers = {
            b"Accept": [b"application/json"],
            b"Content-Type": [b"application/x-www-form-urlencoded"],
        }
        if self.settings.client_auth == "client_secret_basic":
            headers[b"Authorization"] = [
                _basic_credentials(self.settings.client_id, self.settings.client_secret)
            ]
        else:
            form += [
                ("client_id", self.settings.client_id),
                ("client_secret", self.settings.client_secret),
            ]
        body = urlencode(form).encode("ascii")

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
            kid = _token_header(id_token).get("kid")
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


_ACCEPT_JSON = {b"Accept": [b"application/json"]}
