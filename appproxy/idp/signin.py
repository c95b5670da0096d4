"""
The sign-in steps, posted by the forms of C{/authorize} and C{/device}: the
password (checked in a thread: scrypt is slow), the one-time code, a
device's approval or refusal; and what a finished sign-in gives, an
authorization code or an approved device.

Every step checks the form's anti-forgery token and the browser it was made
for; failed steps count towards the lockout of the user name and the client
address.

A finished sign-in is answered with a page that moves the browser on to the
client (L{appproxy.idp.pages.continue_page}), never a redirect: browsers
apply the form's C{form-action 'self'} to every redirect after its POST, and
the client's redirect URI is on another origin.
"""

from __future__ import annotations

from typing import Final

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.web.http import Request

from appproxy.idp import pages, totp
from appproxy.idp._http import (
    BadParameter,
    client_address,
    cookie,
    html,
    message,
    param,
    param_or_empty,
    redirect,
    set_cookie,
    with_query,
)
from appproxy.idp.context import BROWSER_COOKIE, MESSAGE_STALE, SSO_COOKIE, ProviderContext
from appproxy.idp.forms import GENERIC_SIGN_IN_ERROR, current_form, otp_form, sign_in_form
from appproxy.idp.store import (
    AuthRequest,
    CodeGrant,
    Identity,
    Login,
    can_sign_in,
    fingerprint,
    new_token,
    tokens_equal,
)
from appproxy.idp.users import User

__all__ = ["issue_code", "login_post"]

_MESSAGE_FORGED: Final = (
    "The sign-in form could not be verified. Make sure cookies are allowed for this site, "
    "then go back to the application and sign in again."
)


def login_post(context: ProviderContext, request: Request, endpoint: str) -> object:
    """A sign-in form posted to C{endpoint} (C{/authorize} or C{/device})."""
    try:
        login_id = param(request, "login") or ""
        csrf = param(request, "csrf") or ""
        step = param(request, "step") or ""
    except BadParameter:
        return message(request, 400, "Sign-in failed", MESSAGE_STALE)
    login = context.store.login(login_id, context.now()) if login_id else None
    if login is None or login.endpoint != endpoint:
        return message(request, 400, "Sign-in expired", MESSAGE_STALE)
    browser = cookie(request, BROWSER_COOKIE) or ""
    if not (tokens_equal(csrf, login.csrf) and tokens_equal(browser, login.browser)):
        return message(request, 400, "Sign-in failed", _MESSAGE_FORGED)
    if step == "deny" and login.device_code is not None:
        return _device_decision(context, request, login_id, login, approve=False)
    if step != login.step and not (step == "approve" and login.step == "confirm"):
        return current_form(context, request, login_id, login)
    if step == "password":
        return _password_step(context, request, login_id, login)
    if step == "otp":
        return _otp_step(context, request, login_id, login)
    return _device_decision(context, request, login_id, login, approve=True)


def _password_step(
    context: ProviderContext, request: Request, login_id: str, login: Login
) -> object:
    try:
        username = param(request, "username") or ""
        password = param(request, "password") or ""
    except BadParameter:
        username = password = ""
    if not username or not password:
        return sign_in_form(
            context, request, login_id, login, username=username, error=GENERIC_SIGN_IN_ERROR
        )
    address = client_address(request)
    now = context.now()
    if context.store.is_locked(username, address, now):
        context.report(username, address, False, "password")
        return sign_in_form(
            context, request, login_id, login, username=username, error=GENERIC_SIGN_IN_ERROR
        )
    # Counted before the check, so that parallel guesses are counted too;
    # forgiven if it succeeds.
    context.store.record_failure(username, address, now)
    users = context.users.current()
    reactor = context.reactor
    checked: Deferred[User | None] = deferToThreadPool(
        reactor, reactor.getThreadPool(), users.verify_password, username, password
    )
    return context.later(
        request,
        checked.addCallback(_password_checked, context, request, login_id, username, address),
    )


def _password_checked(
    user: User | None,
    context: ProviderContext,
    request: Request,
    login_id: str,
    username: str,
    address: str,
) -> bytes:
    now = context.now()
    login = context.store.login(login_id, now)
    if login is None:
        return message(request, 400, "Sign-in expired", MESSAGE_STALE)
    if user is None:
        context.report(username, address, False, "password")
        return sign_in_form(
            context, request, login_id, login, username=username, error=GENERIC_SIGN_IN_ERROR
        )
    context.store.clear_user_failures(username)
    context.store.forgive_address_failure(address, now)
    context.report(username, address, True, "password")
    credential = fingerprint(user.password_hash)
    if user.totp_secret is not None:
        login = attrs.evolve(login, step="otp", user=user.name, amr=("pwd",), credential=credential)
        context.store.update_login(login_id, login, now)
        return otp_form(request, login_id, login)
    identity = Identity(user=user.name, amr=("pwd",), auth_time=int(now), credential=credential)
    return _complete(context, request, login_id, login, identity)


def _otp_step(context: ProviderContext, request: Request, login_id: str, login: Login) -> bytes:
    code = param_or_empty(request, "code")
    now = context.now()
    address = client_address(request)
    user = context.users.current().get(login.user or "")
    if user is None or user.totp_secret is None or not can_sign_in(user, login.credential):
        context.store.end_login(login_id, now)
        return message(request, 400, "Sign-in expired", MESSAGE_STALE)
    if context.store.is_locked(user.name, address, now):
        context.report(user.name, address, False, "otp")
        return otp_form(
            request, login_id, login, "Too many attempts. Wait a few minutes and try again."
        )
    step = totp.verify(user.totp_secret, code, now)
    if step is None or not context.store.use_totp_step(user.name, step):
        context.store.record_failure(user.name, address, now)
        context.report(user.name, address, False, "otp")
        return otp_form(request, login_id, login, "Incorrect code.")
    context.store.clear_user_failures(user.name)
    context.report(user.name, address, True, "otp")
    identity = Identity(
        user=user.name,
        amr=tuple(dict.fromkeys((*login.amr, "otp"))),
        auth_time=int(now),
        credential=fingerprint(user.password_hash),
    )
    return _complete(context, request, login_id, login, identity)


def _complete(
    context: ProviderContext, request: Request, login_id: str, login: Login, identity: Identity
) -> bytes:
    """The user proved who they are: start an SSO session and finish the login."""
    now = context.now()
    context.store.end_login(login_id, now)
    old = cookie(request, SSO_COOKIE)
    if old is not None:
        context.store.end_session(old, now)
    session_id = new_token()
    context.store.add_session(session_id, identity, now)
    set_cookie(request, SSO_COOKIE, session_id)
    if login.auth is not None:
        # A page, not a redirect: see the module's docstring.
        location = _code_location(context, login.auth, identity)
        return html(request, 200, pages.continue_page(location))
    return _approve_device(context, request, login.device_code or "", identity)


def _code_location(context: ProviderContext, auth: AuthRequest, identity: Identity) -> str:
    """The client's redirect URI with a new authorization code."""
    code = new_token()
    context.store.add_code(code, CodeGrant(auth=auth, identity=identity), context.now())
    return with_query(
        auth.redirect_uri, {"code": code, "state": auth.state, "iss": context.settings.issuer}
    )


def issue_code(
    context: ProviderContext,
    request: Request,
    auth: AuthRequest,
    identity: Identity,
    *,
    status: int,
) -> bytes:
    """
    Redirect the browser back to the client with a new authorization code
    (the answer to a GET; a posted form gets L{pages.continue_page}).
    """
    return redirect(request, _code_location(context, auth, identity), status)


def _device_decision(
    context: ProviderContext, request: Request, login_id: str, login: Login, *, approve: bool
) -> bytes:
    now = context.now()
    context.store.end_login(login_id, now)
    device_code = login.device_code or ""
    if not approve:
        grant = context.store.device(device_code, now)
        if grant is not None and grant.status == "pending":
            context.store.update_device(device_code, attrs.evolve(grant, status="denied"), now)
        return message(
            request,
            200,
            "Request denied",
            "The device was not signed in. You can close this window.",
        )
    # Approval from the confirmation page: the SSO session must still be there.
    identity = context.sso_session(request, context.users.current())
    if identity is None or identity.user != login.user:
        return message(request, 400, "Sign-in expired", MESSAGE_STALE)
    return _approve_device(context, request, device_code, identity)


def _approve_device(
    context: ProviderContext, request: Request, device_code: str, identity: Identity
) -> bytes:
    now = context.now()
    grant = context.store.device(device_code, now)
    if grant is None or grant.status != "pending" or now >= grant.expires_at:
        return message(
            request,
            400,
            "Device code expired",
            "The code has expired. Start again on your device.",
        )
    context.store.update_device(
        device_code, attrs.evolve(grant, status="approved", identity=identity), now
    )
    context.store.release_user_code(grant.user_code, now)
    return message(
        request,
        200,
        "Device approved",
        "Your device is signed in. You can close this window and return to it.",
    )
