"""
The connector enrolment API's messages: what a connector and the service
exchange, outside the tunnel, to register, renew its certificate and pull its
configuration.

The API is HTTP/1.1 with JSON bodies on the tunnel listener (ALPN
C{http/1.1}; the tunnel itself is C{h2}), so a connector needs one address
and one port in its firewall's outbound rules:

  - C{GET /v1/ca}: the connector CA (no authentication; the connector checks
    its fingerprint against the one the administrator gave before it trusts
    anything else);
  - C{GET /v1/registration}: how to get an administrator's token (the
    provider's device authorization endpoint and the client id to use);
  - C{POST /v1/register}: a token and a CSR in, a certificate out;
  - C{POST /v1/renew} (client certificate): a CSR in, a certificate out;
  - C{GET /v1/config} (client certificate): the connector's configuration.

Errors are a status and L{ApiError}'s body.  Pure: parsing and encoding only;
every field is checked, and a message that does not have the expected shape
raises L{MessageError}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import attrs

__all__ = [
    "CA_PATH",
    "CONFIG_PATH",
    "ENROLMENT_ALPN",
    "ENROLMENT_TOKEN_PREFIX",
    "MAX_BODY",
    "REGISTER_PATH",
    "REGISTRATION_PATH",
    "RENEW_PATH",
    "ApiError",
    "AppSettings",
    "CaAnswer",
    "CertificateAnswer",
    "ConnectorSettings",
    "Message",
    "MessageError",
    "RegisterRequest",
    "RegistrationInfo",
    "RenewRequest",
    "decode",
    "encode",
]

#: The ALPN protocol of the enrolment API on the tunnel listener.
ENROLMENT_ALPN: Final = b"http/1.1"
CA_PATH: Final = b"/v1/ca"
REGISTRATION_PATH: Final = b"/v1/registration"
REGISTER_PATH: Final = b"/v1/register"
RENEW_PATH: Final = b"/v1/renew"
CONFIG_PATH: Final = b"/v1/config"
#: The largest request or answer body either side reads.
MAX_BODY: Final = 256 * 1024
#: One-time enrolment tokens start with this (an OpenID token never does).
ENROLMENT_TOKEN_PREFIX: Final = "appproxy-enrol."  # noqa: S105 (a prefix, not a secret)


class MessageError(ValueError):
    """A message is not JSON of the expected shape; the text says what is wrong."""


def _str(data: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise MessageError(f"{key!r} must be a non-empty string")
    return value


def _int(data: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MessageError(f"{key!r} must be a non-negative integer")
    return value


def _number(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise MessageError(f"{key!r} must be a non-negative number")
    return float(value)


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        raise MessageError(f"{key!r} must be true or false")
    return value


def _strings(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MessageError(f"{key!r} must be a list of strings")
    return tuple(value)


@attrs.frozen
class CaAnswer:
    """C{GET /v1/ca}: the connector CA's certificate (PEM)."""

    ca: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaAnswer:
        return cls(ca=_str(data, "ca"))


@attrs.frozen
class RegistrationInfo:
    """
    C{GET /v1/registration}: where a connector gets an administrator's token
    with the device authorization grant (RFC 8628).  C{device_authorization_endpoint},
    C{token_endpoint} and C{client_id} are L{None} when the service offers no
    device registration (then only enrolment tokens register).
    """

    issuer: str | None
    device_authorization_endpoint: str | None
    token_endpoint: str | None
    client_id: str | None
    scope: str
    groups: tuple[str, ...]
    """The connector groups the service's apps use."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RegistrationInfo:
        return cls(
            issuer=_str(data, "issuer", optional=True),
            device_authorization_endpoint=_str(
                data, "device_authorization_endpoint", optional=True
            ),
            token_endpoint=_str(data, "token_endpoint", optional=True),
            client_id=_str(data, "client_id", optional=True),
            scope=_str(data, "scope"),
            groups=_strings(data, "groups"),
        )


@attrs.frozen
class RegisterRequest:
    """
    C{POST /v1/register}: C{token} is an enrolment token (it starts with
    L{ENROLMENT_TOKEN_PREFIX}; the token names the group) or an OpenID
    Connect ID token of an administrator from the device flow (then
    C{group} says which group, L{None} for C{default}).  C{host_name} and
    C{version} are for the inventory only.
    """

    token: str
    csr: str
    group: str | None
    host_name: str
    version: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RegisterRequest:
        return cls(
            token=_str(data, "token"),
            csr=_str(data, "csr"),
            group=_str(data, "group", optional=True),
            host_name=_str(data, "host_name"),
            version=_str(data, "version"),
        )


@attrs.frozen
class RenewRequest:
    """C{POST /v1/renew}, over mutual TLS with the certificate to replace."""

    csr: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RenewRequest:
        return cls(csr=_str(data, "csr"))


@attrs.frozen
class CertificateAnswer:
    """
    The answer to a registration or a renewal (201 and 200): the connector's
    id and group, its certificate (PEM, the leaf), the CA (PEM) and the
    certificate's notAfter (seconds since the epoch).
    """

    connector_id: str
    group: str
    certificate: str
    ca: str
    not_after: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CertificateAnswer:
        return cls(
            connector_id=_str(data, "connector_id"),
            group=_str(data, "group"),
            certificate=_str(data, "certificate"),
            ca=_str(data, "ca"),
            not_after=_number(data, "not_after"),
        )


@attrs.frozen
class AppSettings:
    """One app the connector serves, as C{GET /v1/config} gives it."""

    name: str
    internal_url: str
    """The app's internal URL; the connector reaches only its origin."""
    verify_tls: bool
    ca_pem: str | None
    timeout: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AppSettings:
        if not isinstance(data, Mapping):
            raise MessageError("each app must be an object")
        return cls(
            name=_str(data, "name"),
            internal_url=_str(data, "internal_url"),
            verify_tls=_bool(data, "verify_tls"),
            ca_pem=_str(data, "ca_pem", optional=True),
            timeout=_number(data, "timeout"),
        )


@attrs.frozen
class ConnectorSettings:
    """
    C{GET /v1/config}: the connector's configuration, pulled at start, every
    C{config_interval} seconds, and whenever the service pushes settings on a
    tunnel connection (a reload).  C{connections} is L{None} when the
    service leaves the number of tunnel connections to the connector's own
    file.  C{renew_after}: renew once the certificate is this many seconds
    old (or past two thirds of its life, whichever comes first).
    C{version} changes whenever anything else does.
    """

    connector_id: str
    group: str
    apps: tuple[AppSettings, ...]
    connections: int | None
    config_interval: float
    renew_after: float
    version: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConnectorSettings:
        apps = data.get("apps")
        if not isinstance(apps, list):
            raise MessageError("'apps' must be a list")
        return cls(
            connector_id=_str(data, "connector_id"),
            group=_str(data, "group"),
            apps=tuple(AppSettings.from_json(app) for app in apps),
            connections=_int(data, "connections", optional=True),
            config_interval=_number(data, "config_interval"),
            renew_after=_number(data, "renew_after"),
            version=_str(data, "version"),
        )


@attrs.frozen
class ApiError:
    """
    An error answer's body: a stable C{error} code and a C{message} for the
    administrator (what is wrong and what to do).  Codes: C{bad_request},
    C{bad_csr}, C{unknown_group}, C{invalid_token}, C{not_administrator},
    C{registration_disabled}, C{certificate_required}, C{connector_disabled},
    C{connector_revoked}, C{certificate_retired}, C{not_found}; also
    C{connector_unknown} (403: the certificate's connector was deleted or
    never registered), C{registry_unavailable} (503: the service cannot read
    its connector registry just now), C{provider_unavailable} (503: the
    OpenID provider's metadata cannot be had), C{too_large} (413),
    C{method_not_allowed} (405).
    """

    error: str
    message: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ApiError:
        return cls(error=_str(data, "error"), message=_str(data, "message"))


Message = (
    CaAnswer
    | RegistrationInfo
    | RegisterRequest
    | RenewRequest
    | CertificateAnswer
    | ConnectorSettings
    | ApiError
)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if attrs.has(type(value)):
        return {k: _plain(v) for k, v in attrs.asdict(value, recurse=False).items()}
    return value


def encode(message: Message) -> bytes:
    """A message as a JSON body (UTF-8, compact, keys sorted)."""
    return json.dumps(_plain(message), separators=(",", ":"), sort_keys=True).encode()


def decode(kind: type[Any], body: bytes) -> Any:
    """
    Parse a JSON body as C{kind} (one of the message classes here).

    @raise MessageError: if the body is too large, not JSON, not an object
        or not of C{kind}'s shape.
    """
    if len(body) > MAX_BODY:
        raise MessageError(f"the body is over {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise MessageError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise MessageError("the body is not a JSON object")
    return kind.from_json(data)
