"""
The provider's discovery document (C{/.well-known/openid-configuration}):
L{ProviderMetadata}, what appproxy uses of it, and L{parse_metadata}, which
checks it.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from appproxy.oidc._wire import is_https_url, json_object
from appproxy.oidc.errors import SignInError

__all__ = ["METADATA_MAX_AGE", "ProviderMetadata", "parse_metadata"]

#: How long a discovery document is used before it is fetched again (seconds).
METADATA_MAX_AGE = 3600.0


@attrs.frozen(kw_only=True)
class ProviderMetadata:
    """
    What appproxy uses of a provider's discovery document
    (C{/.well-known/openid-configuration}).

    @ivar issuer: the provider's issuer, equal to the configured one.
    @ivar authorization_endpoint: where the browser is sent to sign in.
    @ivar token_endpoint: where the code is exchanged for tokens.
    @ivar jwks_uri: the provider's signing keys.
    @ivar code_challenge_methods_supported: as advertised; L{None} if the
        document does not say (if it does, it includes C{S256}).
    @ivar token_endpoint_auth_methods_supported: as advertised (the
        default, per the specification, is C{client_secret_basic}).
    @ivar id_token_signing_alg_values_supported: as advertised.
    @ivar authorization_response_iss_parameter_supported: the provider adds
        C{iss} to authorization responses (RFC 9207), so its absence is an
        error.
    @ivar userinfo_endpoint: the UserInfo endpoint, if any.
    @ivar end_session_endpoint: RP-initiated logout, if supported.
    @ivar device_authorization_endpoint: the device authorization grant's
        endpoint (RFC 8628), if the provider has one (an invalid one is
        ignored: sign-in does not use it; connector registration does).
    """

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    code_challenge_methods_supported: tuple[str, ...] | None = None
    token_endpoint_auth_methods_supported: tuple[str, ...] = ("client_secret_basic",)
    id_token_signing_alg_values_supported: tuple[str, ...] = ()
    authorization_response_iss_parameter_supported: bool = False
    userinfo_endpoint: str | None = None
    end_session_endpoint: str | None = None
    device_authorization_endpoint: str | None = None


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
    metadata = json_object(document)
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
        if not is_https_url(metadata.get(name)):
            raise SignInError(
                "discovery", f"The provider's discovery document has no valid https {name}"
            )
        endpoints[name] = metadata[name]
    for name in ("userinfo_endpoint", "end_session_endpoint"):
        value = metadata.get(name)
        if value is not None and not is_https_url(value):
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
    device = metadata.get("device_authorization_endpoint")
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
        device_authorization_endpoint=device if is_https_url(device) else None,
        code_challenge_methods_supported=pkce,
        token_endpoint_auth_methods_supported=auth_methods,
        id_token_signing_alg_values_supported=algorithms,
        authorization_response_iss_parameter_supported=iss_parameter,
    )
