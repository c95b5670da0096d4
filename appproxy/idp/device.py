"""
The device authorization grant (RFC 8628): C{/device_authorization}, where a
device gets its codes, and C{/device}, the page where the user types the code
the device shows, then signs in (or, signed in already, confirms).  The
device collects its tokens at C{/token} (L{appproxy.idp.token}).
"""

from __future__ import annotations

import secrets
from typing import Any, Final

from twisted.web.http import Request

from appproxy.idp import pages
from appproxy.idp._http import OAuthError, client_address, html, param, param_or_empty, with_query
from appproxy.idp.clients import client_request
from appproxy.idp.context import ProviderContext
from appproxy.idp.forms import confirm_form, format_user_code, sign_in_form
from appproxy.idp.settings import ClientRegistration
from appproxy.idp.signin import login_post
from appproxy.idp.store import DeviceGrant, new_token

__all__ = ["render_device", "render_device_authorization", "render_device_post"]

# RFC 8628 section 6.1: no vowels, no look-alikes; 20**8 codes.
_USER_CODE_ALPHABET: Final = "BCDFGHJKLMNPQRSTVWXZ"
_USER_CODE_LENGTH: Final = 8


def _normalize_user_code(text: str) -> str:
    return "".join(char for char in text.upper() if char in _USER_CODE_ALPHABET)


def _new_user_code(context: ProviderContext, now: float) -> str:
    while True:
        code = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(_USER_CODE_LENGTH))
        if context.store.device_code_for(code, now) is None:
            return code


def render_device_authorization(context: ProviderContext, request: Request) -> bytes:
    """POST C{/device_authorization}."""

    def start(request: Request, client: ClientRegistration) -> dict[str, Any]:
        scope = tuple(dict.fromkeys((param(request, "scope") or "openid").split()))
        if "openid" not in scope:
            raise OAuthError("invalid_scope", "the scope must include openid")
        return _start_device(context, client, scope)

    return client_request(context.settings, request, start)


def _start_device(
    context: ProviderContext, client: ClientRegistration, scope: tuple[str, ...]
) -> dict[str, Any]:
    settings = context.settings
    now = context.now()
    user_code = _new_user_code(context, now)
    device_code = new_token()
    lifetime = settings.device_code_lifetime
    grant = DeviceGrant(
        client_id=client.client_id,
        scope=scope,
        user_code=user_code,
        expires_at=now + lifetime,
        interval=settings.device_poll_interval,
    )
    context.store.add_device(device_code, grant, now)
    verification_uri = f"{settings.issuer}/device"
    shown = format_user_code(user_code)
    return {
        "device_code": device_code,
        "user_code": shown,
        "verification_uri": verification_uri,
        "verification_uri_complete": with_query(verification_uri, {"user_code": shown}),
        "expires_in": lifetime,
        "interval": settings.device_poll_interval,
    }


def render_device(context: ProviderContext, request: Request) -> bytes:
    """GET C{/device}: the code entry form."""
    user_code = param_or_empty(request, "user_code")
    return html(request, 200, pages.device_code_page(action="/device", user_code=user_code))


def render_device_post(context: ProviderContext, request: Request) -> object:
    """POST C{/device}: a typed code, or a sign-in form."""
    if (request.args or {}).get(b"login"):
        return login_post(context, request, "/device")
    typed = param_or_empty(request, "user_code")
    now = context.now()
    address = client_address(request)
    if context.store.is_locked(None, address, now):
        body = pages.device_code_page(
            action="/device", error="Too many attempts. Wait a few minutes and try again."
        )
        return html(request, 200, body)
    device_code = context.store.device_code_for(_normalize_user_code(typed), now)
    grant = context.store.device(device_code, now) if device_code is not None else None
    if device_code is None or grant is None or grant.status != "pending" or now >= grant.expires_at:
        context.store.record_failure(None, address, now)
        body = pages.device_code_page(
            action="/device",
            user_code=typed,
            error="That code is not valid or has expired. Check the code on your device.",
        )
        return html(request, 200, body)
    identity = context.sso_session(request, context.users.current())
    if identity is None:
        login_id, login = context.new_login(request, device_code=device_code, step="password")
        return sign_in_form(context, request, login_id, login)
    login_id, login = context.new_login(
        request, device_code=device_code, step="confirm", identity=identity
    )
    return confirm_form(context, request, login_id, login)
