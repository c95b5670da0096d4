"""
How appproxy signs users in at one provider: L{RelyingPartySettings}, each
field checked as it is set, and the C{provider_address} forms it takes.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

import attrs
from cryptography import x509

from appproxy.oidc._wire import is_https_url
from appproxy.oidc.keys import ID_TOKEN_ALGORITHMS

__all__ = ["CLIENT_AUTH_METHODS", "RelyingPartySettings", "parse_provider_address"]

CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post")


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
        if not is_https_url(value, query=False):
            raise ValueError(f"{name} must be an https URL without query or fragment: {value!r}")

    return check


def _check_algorithms(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if not value:
        raise ValueError("algorithms must name at least one algorithm")
    for algorithm in value:
        if algorithm not in ID_TOKEN_ALGORITHMS:
            raise ValueError(
                f"ID token algorithm {algorithm!r} is not allowed (asymmetric signatures only:"
                f" {', '.join(ID_TOKEN_ALGORITHMS)})"
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
