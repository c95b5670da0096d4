"""
How users sign in: C{[oidc]} (the OpenID provider appproxy relies on) and
C{[builtin_provider]} (the service's own), and the checks between the two.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from appproxy.access.policy import MfaRule
from appproxy.config._files import client_secret_file, optional_ca_file
from appproxy.config._messages import quote
from appproxy.config._table import Context, Table
from appproxy.config._values import host_and_port, https_url
from appproxy.config.model import BuiltinProviderConfig, OidcConfig

_OIDC_KEYS = (
    "issuer",
    "client_id",
    "client_secret_file",
    "client_auth",
    "callback_url",
    "scopes",
    "username_claim",
    "groups_claim",
    "algorithms",
    "clock_skew",
    "provider_ca",
    "provider_address",
    "mfa_amr",
    "mfa_acr",
    "step_up_acr_values",
    "jwks_refetch_interval",
)
_BUILTIN_PROVIDER_KEYS = ("issuer", "users_file", "device_client_id")
_CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
#: Client ids the built-in provider accepts.
_CLIENT_ID = re.compile(r"[\x21-\x39\x3b-\x7e]{1,255}")
_CLIENT_ID_PROBLEM = (
    "is not a valid client id (1 to 255 printable ASCII characters, no spaces or ':')"
)
#: The shortest client secret the built-in provider accepts.
_MIN_BUILTIN_CLIENT_SECRET = 16
#: Signature algorithms an ID token may use (asymmetric only: never "none",
#: never an HMAC, which a provider's public key could be abused to forge).
_ID_TOKEN_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


def oidc(top: Table) -> OidcConfig | None:
    """C{[oidc]}, if there is one."""
    table = top.optional_table("oidc", _OIDC_KEYS)
    if table is None:
        return None
    issuer = https_url(table, "issuer", path=False)
    client_id = table.string("client_id")
    secret_file, client_secret = client_secret_file(table, "client_secret_file")
    client_auth = table.choice("client_auth", _CLIENT_AUTH_METHODS, "client_secret_basic")
    callback_url = https_url(table, "callback_url", path=True)
    scopes = table.string_list("scopes", ("openid", "profile", "email"))
    for index, scope in enumerate(scopes):
        if not all("!" <= char <= "~" and char not in '"\\' for char in scope):
            table.fail_item(
                "scopes",
                index,
                f"{quote(scope)} is not a valid scope (printable ASCII, no spaces,"
                " quotes or backslashes)",
            )
    if "openid" not in scopes:
        table.fail("scopes", "must include 'openid'")
    algorithms = table.string_list("algorithms", ("RS256", "PS256", "ES256"))
    if not algorithms:
        table.fail("algorithms", "must name at least one algorithm")
    for index, algorithm in enumerate(algorithms):
        if algorithm not in _ID_TOKEN_ALGORITHMS:
            table.fail_item(
                "algorithms",
                index,
                f"{quote(algorithm)} is not allowed (asymmetric signatures only:"
                f" {', '.join(_ID_TOKEN_ALGORITHMS)})",
            )
    provider_ca, provider_ca_pem = optional_ca_file(table, "provider_ca")
    provider_address = host_and_port(table, "provider_address")
    mfa_amr = table.string_list("mfa_amr", MfaRule().amr)
    mfa_acr = table.string_list("mfa_acr", MfaRule().acr)
    return OidcConfig(
        issuer=issuer,
        client_id=client_id,
        client_secret_file=secret_file,
        client_secret=client_secret,
        client_auth=client_auth,
        callback_url=callback_url,
        scopes=scopes,
        username_claim=table.optional_string("username_claim") or "preferred_username",
        groups_claim=table.optional_string("groups_claim") or "groups",
        algorithms=algorithms,
        clock_skew=table.integer("clock_skew", 60, 0, 600),
        provider_ca=provider_ca,
        provider_ca_pem=provider_ca_pem,
        provider_address=provider_address,
        mfa=MfaRule(amr=mfa_amr, acr=mfa_acr),
        step_up_acr_values=table.optional_string("step_up_acr_values") or "mfa",
        jwks_refetch_interval=table.number("jwks_refetch_interval", 30.0, 3600.0),
    )


def builtin_provider(top: Table, state_dir: Path) -> BuiltinProviderConfig | None:
    """C{[builtin_provider]}, if there is one; its users file is in C{state_dir}."""
    table = top.optional_table("builtin_provider", _BUILTIN_PROVIDER_KEYS)
    if table is None:
        return None
    issuer = https_url(table, "issuer", path=False).rstrip("/")
    if urlsplit(issuer).path:
        table.fail("issuer", "must be a host name only (https://login.example.com), no path")
    users_file = table.no_nul("users_file", table.optional_string("users_file") or "users.json")
    device_client_id = table.optional_string("device_client_id") or "appproxy-connector"
    if not _CLIENT_ID.fullmatch(device_client_id):
        table.fail("device_client_id", f"{quote(device_client_id)} {_CLIENT_ID_PROBLEM}")
    return BuiltinProviderConfig(
        issuer=issuer,
        users_file=state_dir / users_file,
        device_client_id=device_client_id,
    )


def check_sign_in(
    ctx: Context, oidc: OidcConfig | None, builtin: BuiltinProviderConfig | None
) -> None:
    """
    The built-in provider serves only sign-in through C{[oidc]}; when
    appproxy is a client of its own provider, it is held to that provider's
    rules for client ids and secrets.
    """
    if oidc is None:
        if builtin is not None:
            ctx.fail(
                "builtin_provider",
                "needs an [oidc] table whose issuer is the built-in provider's"
                f" ({quote(builtin.issuer)})",
            )
        return
    if builtin is None or oidc.issuer.rstrip("/") != builtin.issuer:
        return
    if not _CLIENT_ID.fullmatch(oidc.client_id):
        ctx.fail("oidc.client_id", f"{quote(oidc.client_id)} {_CLIENT_ID_PROBLEM}")
    if oidc.client_id == builtin.device_client_id:
        ctx.fail(
            "oidc.client_id",
            f"{quote(oidc.client_id)} is also builtin_provider.device_client_id:"
            " the two clients need different ids",
        )
    if len(oidc.client_secret) < _MIN_BUILTIN_CLIENT_SECRET:
        ctx.fail(
            "oidc.client_secret_file",
            "the built-in provider needs a client secret of at least"
            f" {_MIN_BUILTIN_CLIENT_SECRET} characters",
        )
