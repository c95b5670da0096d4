"""
C{/authorize}: the authorization request (GET), answered with the sign-in
form, the one-time code form (a password-only session asked for MFA), an
error sent back to the client, or straight away with a code when the
browser's SSO session will do.  Its forms are posted back here (POST, see
L{appproxy.idp.signin}).

Only the authorization code flow, with PKCE (S256), in query mode.  The
sign-in page names the app the user signs in to when the request names one
of the service's apps (L{APP_PARAMETER}), the client otherwise.
"""

from __future__ import annotations

import re

import attrs
from twisted.web.http import Request

from appproxy.idp._http import (
    BadParameter,
    message,
    param,
    param_or_empty,
    redirect,
    with_query,
)
from appproxy.idp.context import ProviderContext
from appproxy.idp.forms import otp_form, sign_in_form
from appproxy.idp.settings import APP_PARAMETER, MFA_ACR_VALUES
from appproxy.idp.signin import issue_code, login_post
from appproxy.idp.store import AuthRequest

__all__ = ["APP_PARAMETER", "render_authorize", "render_authorize_post"]


_CODE_CHALLENGE_RE = re.compile(r"[A-Za-z0-9_-]{43}\Z")
_DIGITS_RE = re.compile(r"[0-9]{1,9}\Z")
_INVALID = "Invalid sign-in request"


@attrs.frozen
class _PageError(Exception):
    """Answer with an HTML message page: the browser must not be sent anywhere."""

    message: str


@attrs.frozen
class _AuthorizationError(Exception):
    """An error to send back to a valid client's redirect URI."""

    error: str
    description: str
    state: str | None


def _app_name(context: ProviderContext, request: Request) -> str | None:
    """
    The app the request says the user signs in to (C{appproxy_app}), if it
    is one of the service's own: anything else, which a crafted link could
    hold, is ignored.
    """
    name = param_or_empty(request, APP_PARAMETER)
    return name if name and name in context.app_names() else None


def _parse_authorization(context: ProviderContext, request: Request) -> AuthRequest:
    """
    @raise _PageError: if the client or redirect URI is not valid.
    @raise _AuthorizationError: for any other problem.
    """
    try:
        client_id = param(request, "client_id")
        redirect_uri = param(request, "redirect_uri")
    except BadParameter as e:
        raise _PageError(f"{e}.") from None
    client = context.settings.client(client_id) if client_id else None
    if client is None:
        raise _PageError(
            "The application that sent you here is not registered with this sign-in service."
        )
    if redirect_uri is None or redirect_uri not in client.redirect_uris:
        raise _PageError(
            "The application asked to return to an address that is not registered for it."
        )
    try:
        state = param(request, "state")
        response_type = param(request, "response_type")
        scope = tuple(dict.fromkeys((param(request, "scope") or "").split()))
        nonce = param(request, "nonce")
        challenge = param(request, "code_challenge")
        method = param(request, "code_challenge_method")
        prompt = frozenset((param(request, "prompt") or "").split())
        max_age_text = param(request, "max_age")
        acr_values = frozenset((param(request, "acr_values") or "").split())
        response_mode = param(request, "response_mode")
        login_hint = param(request, "login_hint")
        has_request = param(request, "request") is not None
        has_request_uri = param(request, "request_uri") is not None
    except BadParameter as e:
        # The state itself may be what is wrong: it cannot be sent back.
        raise _AuthorizationError("invalid_request", str(e), None) from None

    def fail(error: str, description: str) -> _AuthorizationError:
        return _AuthorizationError(error, description, state)

    if has_request:
        raise fail("request_not_supported", "request objects are not supported")
    if has_request_uri:
        raise fail("request_uri_not_supported", "request_uri is not supported")
    if response_type != "code":
        raise fail("unsupported_response_type", "only response_type=code is supported")
    if response_mode not in (None, "query"):
        raise fail("invalid_request", "only response_mode=query is supported")
    if "openid" not in scope:
        raise fail("invalid_scope", "the scope must include openid")
    if challenge is None or method != "S256":
        raise fail("invalid_request", "PKCE is required: code_challenge with method S256")
    if not _CODE_CHALLENGE_RE.match(challenge):
        raise fail("invalid_request", "code_challenge is not a base64url SHA-256 digest")
    if "none" in prompt and len(prompt) > 1:
        raise fail("invalid_request", "prompt=none cannot be combined with other values")
    max_age: int | None = None
    if max_age_text is not None:
        if not _DIGITS_RE.match(max_age_text):
            raise fail("invalid_request", "max_age must be a non-negative integer")
        max_age = int(max_age_text)
    return AuthRequest(
        app=_app_name(context, request),
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        state=state,
        nonce=nonce,
        code_challenge=challenge,
        scope=scope,
        prompt=prompt,
        max_age=max_age,
        mfa=bool(acr_values & MFA_ACR_VALUES),
        login_hint=login_hint,
    )


def _error_redirect(
    context: ProviderContext,
    request: Request,
    redirect_uri: str,
    state: str | None,
    error: str,
    description: str,
) -> bytes:
    parameters = {
        "error": error,
        "error_description": description,
        "state": state,
        "iss": context.settings.issuer,
    }
    return redirect(request, with_query(redirect_uri, parameters))


def render_authorize(context: ProviderContext, request: Request) -> bytes:
    """GET C{/authorize}."""
    try:
        auth = _parse_authorization(context, request)
    except _PageError as e:
        return message(request, 400, _INVALID, e.message)
    except _AuthorizationError as e:
        # The client and redirect URI were valid: _parse_authorization checks them first.
        redirect_uri = param(request, "redirect_uri") or ""
        return _error_redirect(context, request, redirect_uri, e.state, e.error, e.description)
    now = context.now()
    users = context.users.current()
    identity = context.sso_session(request, users)
    user = users.get(identity.user) if identity is not None else None
    need_login = (
        identity is None
        or "login" in auth.prompt
        or (auth.max_age is not None and now - identity.auth_time > auth.max_age)
    )
    need_otp = (
        not need_login
        and auth.mfa
        and user is not None
        and user.totp_secret is not None
        and identity is not None
        and "otp" not in identity.amr
    )
    if "none" in auth.prompt and (need_login or need_otp):
        return _error_redirect(
            context,
            request,
            auth.redirect_uri,
            auth.state,
            "login_required",
            "the user must sign in",
        )
    if need_login or identity is None:
        login_id, login = context.new_login(request, auth=auth, step="password")
        return sign_in_form(context, request, login_id, login, username=auth.login_hint or "")
    if need_otp:
        login_id, login = context.new_login(request, auth=auth, step="otp", identity=identity)
        return otp_form(request, login_id, login)
    return issue_code(context, request, auth, identity, status=302)


def render_authorize_post(context: ProviderContext, request: Request) -> object:
    """POST C{/authorize}: a sign-in form."""
    return login_post(context, request, "/authorize")
