"""
Client authentication at the endpoints a relying party calls directly
(C{/token}, C{/device_authorization}): HTTP Basic or C{client_secret_post}
for a confidential client, the bare C{client_id} for a public one; and the
frame those endpoints share (parameters in the body only, errors as RFC 6749
JSON).
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Final

from twisted.web.http import Request

from appproxy.idp._http import (
    BadParameter,
    OAuthError,
    has_query,
    json_response,
    oauth_error,
    param,
)
from appproxy.idp.settings import ClientRegistration, ProviderSettings
from appproxy.idp.store import tokens_equal

__all__ = ["authenticate_client", "client_request"]

_CHALLENGE: Final = b'Basic realm="appproxy"'


def _invalid_client(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401, _CHALLENGE)


def _credentials(request: Request) -> tuple[str, str | None, str]:
    """
    The client id, secret and authentication method the request carries.

    @raise OAuthError: if they are missing, malformed or ambiguous.
    """
    raw_header = request.getHeader(b"authorization")
    header = raw_header.decode("latin-1") if raw_header is not None else None
    form_id = param(request, "client_id")
    form_secret = param(request, "client_secret")
    if header is not None:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "basic":
            raise _invalid_client("use HTTP Basic client authentication")
        if form_secret is not None:
            raise OAuthError("invalid_request", "use one client authentication method only")
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _invalid_client("malformed Basic credentials") from None
        raw_id, colon, raw_secret = decoded.partition(":")
        if not colon:
            raise _invalid_client("malformed Basic credentials")
        client_id = urllib.parse.unquote_plus(raw_id)
        if form_id is not None and form_id != client_id:
            raise OAuthError("invalid_request", "client_id does not match the credentials")
        return client_id, urllib.parse.unquote_plus(raw_secret), "client_secret_basic"
    if form_secret is not None:
        if form_id is None:
            raise OAuthError("invalid_request", "client_id is missing")
        return form_id, form_secret, "client_secret_post"
    if form_id is not None:
        return form_id, None, "none"
    raise _invalid_client("client authentication is required")


def authenticate_client(settings: ProviderSettings, request: Request) -> ClientRegistration:
    """
    @raise OAuthError: C{invalid_client} (401) or C{invalid_request}.
    @raise BadParameter: if a client parameter is repeated or malformed.
    """
    client_id, secret, method = _credentials(request)
    client = settings.client(client_id)
    expected = client.client_secret if client is not None else None
    # Compare even for an unknown client, so time does not tell.
    matched = tokens_equal(secret or "", expected or "\x00" * 32)
    if client is None:
        raise _invalid_client("unknown client or wrong secret")
    if client.public:
        if method != "none":
            raise _invalid_client("a public client has no secret")
        return client
    if method == "none":
        raise _invalid_client("client authentication is required")
    if method not in client.auth_methods:
        raise _invalid_client(f"{method} is not allowed for this client")
    if not matched:
        raise _invalid_client("unknown client or wrong secret")
    return client


def client_request(
    settings: ProviderSettings,
    request: Request,
    handle: Callable[[Request, ClientRegistration], Mapping[str, Any]],
) -> bytes:
    """
    Answer a relying party's POST: authenticate the client, then
    C{handle(request, client)} gives the JSON document to send.  Parameters
    must be in the body; an L{OAuthError} (a bad parameter is one) is sent
    as RFC 6749 JSON.
    """
    try:
        if has_query(request):
            raise OAuthError("invalid_request", "send the parameters in the request body")
        try:
            client = authenticate_client(settings, request)
            document = handle(request, client)
        except BadParameter as e:
            raise OAuthError("invalid_request", str(e)) from None
    except OAuthError as e:
        return oauth_error(request, e)
    return json_response(request, 200, document)
