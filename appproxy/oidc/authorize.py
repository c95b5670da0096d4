"""
The browser's part of a sign-in: a PKCE pair, the authorization request URL,
the check of the provider's redirect back, and the RP-initiated logout URL.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping

from appproxy.oidc._wire import b64url, constant_time_equal, with_query
from appproxy.oidc.errors import SignInError, provider_error
from appproxy.oidc.metadata import ProviderMetadata
from appproxy.oidc.settings import RelyingPartySettings

__all__ = [
    "authorization_url",
    "check_authorization_response",
    "end_session_url",
    "new_pkce",
]


def new_pkce() -> tuple[str, str]:
    """
    A new PKCE pair (RFC 7636).

    @return: C{(code_verifier, code_challenge)}: the verifier is 64
        random URL-safe characters; the challenge is its S256 transform.
    """
    verifier = secrets.token_urlsafe(48)
    return verifier, b64url(hashlib.sha256(verifier.encode("ascii")).digest())


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
    return with_query(metadata.authorization_endpoint, parameters)


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
    if not state or not constant_time_equal(state, expected_state):
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
            + provider_error(args["error"], args.get("error_description")),
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
    return with_query(metadata.end_session_endpoint, parameters)
