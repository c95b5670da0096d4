"""
Tokens: the code exchange request and the token endpoint's answer
(L{parse_token_response}), and the ID token's verification: its header, its
signature with the key L{choose_key} picks, and its claims
(L{verify_id_token}, L{check_id_token_claims}).

Pure: no Twisted, no I/O.  PyJWT is used for one thing only, the JWS
signature; the header (algorithm, key choice) and every claim are checked here.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import quote_plus, urlencode

import attrs
import jwt

from appproxy.oidc._wire import b64url_decode, constant_time_equal, json_object
from appproxy.oidc.errors import SignInError, provider_error
from appproxy.oidc.keys import ID_TOKEN_ALGORITHMS, choose_key
from appproxy.oidc.metadata import ProviderMetadata
from appproxy.oidc.settings import RelyingPartySettings

__all__ = [
    "TokenResponse",
    "check_id_token_claims",
    "code_exchange_request",
    "parse_token_response",
    "signed_claims",
    "token_header",
    "verify_id_token",
]

# Longest ID token accepted (a token with many groups can be large, but not
# this large).
_MAX_TOKEN_LENGTH = 64 * 1024


# --- the code exchange -------------------------------------------------------


def _basic_credentials(client_id: str, client_secret: str) -> bytes:
    """
    An HTTP Basic C{Authorization} value for a client (RFC 6749 section
    2.3.1: both parts form-urlencoded before being joined and encoded).
    """
    user_pass = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return b"Basic " + base64.b64encode(user_pass.encode("ascii"))


def code_exchange_request(
    settings: RelyingPartySettings, code: str, verifier: str
) -> tuple[dict[bytes, list[bytes]], bytes]:
    """
    The request that exchanges an authorization code (and its PKCE verifier)
    for tokens, the client authenticated as C{settings.client_auth} says.

    @return: the headers and the form-encoded body to POST to the token
        endpoint.
    """
    form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", settings.redirect_uri),
        ("code_verifier", verifier),
    ]
    headers = {
        b"Accept": [b"application/json"],
        b"Content-Type": [b"application/x-www-form-urlencoded"],
    }
    if settings.client_auth == "client_secret_basic":
        headers[b"Authorization"] = [_basic_credentials(settings.client_id, settings.client_secret)]
    else:
        form += [
            ("client_id", settings.client_id),
            ("client_secret", settings.client_secret),
        ]
    return headers, urlencode(form).encode("ascii")


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
    document = json_object(body)
    if code != 200:
        if document is not None and "error" in document:
            raise SignInError(
                "token",
                "The identity provider refused to exchange the sign-in code: "
                + provider_error(document["error"], document.get("error_description")),
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


# --- the ID token ------------------------------------------------------------


def _token_error(reason: str) -> SignInError:
    return SignInError("id-token", reason)


def token_header(raw: str) -> dict[str, Any]:
    """
    The (unverified) JOSE header of a compact JWS.

    @raise SignInError: (step C{"id-token"}) if C{raw} is not a compact JWS
        (too long, encrypted, or its header not a JSON object).
    """
    if not isinstance(raw, str) or len(raw) > _MAX_TOKEN_LENGTH or not raw.isascii():
        raise _token_error("The ID token is malformed")
    segments = raw.split(".")
    if len(segments) == 5:
        raise _token_error("The ID token is encrypted, which this service does not support")
    if len(segments) != 3:
        raise _token_error("The ID token is malformed")
    try:
        header = json_object(b64url_decode(segments[0]))
    except ValueError:
        header = None
    if header is None:
        raise _token_error("The ID token's header is malformed")
    return header


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
    if not isinstance(token_nonce, str) or not constant_time_equal(token_nonce, nonce):
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


def signed_claims(
    raw: str, *, keys: Mapping[str, jwt.PyJWK], algorithms: Collection[str]
) -> dict[str, Any]:
    """
    The claims of an ID token whose header and signature are good (the
    first half of L{verify_id_token}; the claims are not checked): C{alg}
    one of C{algorithms} and of L{ID_TOKEN_ALGORITHMS}, no C{crit}, the key
    chosen by C{kid} (L{choose_key}), the signature checked with that key
    and that algorithm only.

    @raise SignInError: (step C{"id-token"}) with the reason.
    """
    header = token_header(raw)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ID_TOKEN_ALGORITHMS or alg not in algorithms:
        raise _token_error("The ID token is signed with an algorithm that is not allowed (alg)")
    if "crit" in header:
        raise _token_error("The ID token uses header extensions this service does not know (crit)")
    key = choose_key(keys, header.get("kid"), alg)
    try:
        decoded = jwt.api_jws.PyJWS(algorithms=[alg]).decode_complete(
            raw, key=key.key, algorithms=[alg]
        )
    except jwt.InvalidSignatureError:
        raise _token_error("The ID token's signature is not valid") from None
    except jwt.PyJWTError:
        raise _token_error("The ID token is malformed") from None
    claims = json_object(decoded["payload"])
    if claims is None:
        raise _token_error("The ID token's claims are malformed")
    return claims


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
    claims = signed_claims(raw, keys=keys, algorithms=settings.algorithms)
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
