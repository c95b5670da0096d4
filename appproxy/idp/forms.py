"""
The sign-in forms of a pending sign-in, as responses: user name and
password, the one-time code, and the approval of a device by a user who is
signed in already.  The pages themselves are L{appproxy.idp.pages}.
"""

from __future__ import annotations

from twisted.web.http import Request

from appproxy.idp import pages
from appproxy.idp._http import html
from appproxy.idp.context import ProviderContext
from appproxy.idp.store import Login

__all__ = [
    "GENERIC_SIGN_IN_ERROR",
    "confirm_form",
    "current_form",
    "format_user_code",
    "otp_form",
    "sign_in_form",
]

#: What a wrong user name, password or locked account is told: the same.
GENERIC_SIGN_IN_ERROR = "Incorrect user name or password."


def format_user_code(code: str) -> str:
    """A device's user code as shown: two halves joined by a dash."""
    half = len(code) // 2
    return f"{code[:half]}-{code[half:]}"


def _client_label(context: ProviderContext, login: Login) -> tuple[str, str | None]:
    """
    The name of what the user signs in to (the app the authorization
    request names, else the client) and, for a device, the code it shows.
    """
    if login.auth is not None:
        return login.auth.app or login.auth.client_id, None
    grant = context.store.device(login.device_code or "", context.now())
    if grant is None:
        return "a device", ""
    return grant.client_id, format_user_code(grant.user_code)


def sign_in_form(
    context: ProviderContext,
    request: Request,
    login_id: str,
    login: Login,
    error: str | None = None,
    *,
    username: str = "",
) -> bytes:
    """
    The user name and password form of C{login}.

    @param error: a message to show above the form.
    @param username: a user name to fill in.
    """
    client, user_code = _client_label(context, login)
    body = pages.sign_in_page(
        action=login.endpoint,
        login_id=login_id,
        csrf=login.csrf,
        client=client,
        username=username,
        error=error,
        deny_action="/device" if login.device_code is not None else None,
        user_code=user_code,
    )
    return html(request, 200, body)


def otp_form(request: Request, login_id: str, login: Login, error: str | None = None) -> bytes:
    body = pages.otp_page(
        action=login.endpoint,
        login_id=login_id,
        csrf=login.csrf,
        user=login.user or "",
        error=error,
    )
    return html(request, 200, body)


def confirm_form(context: ProviderContext, request: Request, login_id: str, login: Login) -> bytes:
    grant = context.store.device(login.device_code or "", context.now())
    body = pages.device_confirm_page(
        action="/device",
        login_id=login_id,
        csrf=login.csrf,
        user=login.user or "",
        client=grant.client_id if grant is not None else "",
        user_code=format_user_code(grant.user_code) if grant is not None else "",
    )
    return html(request, 200, body)


def current_form(context: ProviderContext, request: Request, login_id: str, login: Login) -> bytes:
    """The form of the step C{login} is at."""
    if login.step == "otp":
        return otp_form(request, login_id, login)
    if login.step == "confirm":
        return confirm_form(context, request, login_id, login)
    return sign_in_form(context, request, login_id, login)
