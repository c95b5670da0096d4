"""
The HTML pages of the built-in identity provider: sign-in, one-time code,
device code entry and approval, and plain messages.

Plain, accessible HTML: labelled fields, the right C{autocomplete} hints, an
error announced with C{role="alert"}; no script, no external assets (the
pages are served with C{Content-Security-Policy: default-src 'none';
style-src 'unsafe-inline'; form-action 'self'}).  Every value is escaped.

Browsers apply C{form-action} to every redirect that follows a form's POST
(Chromium does), so a form posted here is never answered with a redirect to
another origin: L{continue_page} moves the browser on instead, by a
C{<meta http-equiv="refresh">} and a link, a navigation of its own.

Pure: no reactor, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Final
from urllib.parse import quote

from appproxy.frontend.errorpage import VIEWPORT_META, html_page

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "continue_page",
    "device_code_page",
    "device_confirm_page",
    "message_page",
    "otp_page",
    "sign_in_page",
]

CONTENT_SECURITY_POLICY: Final = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"

_STYLE = """\
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;\
background:#f4f5f7;color:#1f2328}\
main{max-width:24rem;margin:10vh auto;padding:2rem 2.5rem;background:#fff;\
border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12)}\
h1{margin:0 0 1rem;font-size:1.4rem}\
p{line-height:1.5}\
label{display:block;margin:1rem 0 .25rem;font-weight:600}\
input{box-sizing:border-box;width:100%;padding:.5rem;font-size:1rem;\
border:1px solid #8c959f;border-radius:4px}\
input:focus,button:focus{outline:3px solid #0969da;outline-offset:1px}\
button{margin-top:1.25rem;padding:.55rem 1.2rem;font-size:1rem;border:0;border-radius:4px;\
background:#0969da;color:#fff;cursor:pointer}\
button.secondary{background:#eaeef2;color:#1f2328}\
.error{padding:.6rem .8rem;border-radius:4px;background:#ffebe9;color:#82071e;\
border:1px solid #ff8182}\
.muted{color:#57606a;font-size:.9rem}"""


#: What a URL in a refresh or a link may hold as it is; anything else
#: (quotes, spaces, angle brackets, non-ASCII) is percent-encoded.
_URL_SAFE: Final = ":/?#[]@!$&()*+,;=%-._~"


def _e(text: str) -> str:
    return escape(text, quote=True)


def _page(title: str, body: str) -> bytes:
    return html_page(
        title=title,
        style=_STYLE,
        head=['<meta name="referrer" content="no-referrer">', VIEWPORT_META],
        main=f"<h1>{_e(title)}</h1>\n{body}\n",
    )


def _error(message: str | None) -> str:
    if message is None:
        return ""
    return f'<p class="error" role="alert" id="error">{_e(message)}</p>\n'


def _hidden(fields: Iterable[tuple[str, str]]) -> str:
    return "".join(
        f'<input type="hidden" name="{_e(name)}" value="{_e(value)}">\n' for name, value in fields
    )


def _described_by(error: str | None) -> str:
    return ' aria-describedby="error" aria-invalid="true"' if error is not None else ""


def sign_in_page(
    *,
    action: str,
    login_id: str,
    csrf: str,
    client: str,
    username: str = "",
    error: str | None = None,
    deny_action: str | None = None,
    user_code: str | None = None,
) -> bytes:
    """
    The user name and password form.

    @param action: where the form is posted (a path on the provider).
    @param login_id: the pending sign-in this form belongs to.
    @param csrf: its anti-forgery token.
    @param client: the application asking, as shown to the user.
    @param username: a user name to fill in.
    @param error: a message to show above the form.
    @param deny_action: if set, a second form there lets the user refuse
        (device approval).
    @param user_code: the code the device shows (device approval).
    """
    hidden = _hidden([("login", login_id), ("csrf", csrf), ("step", "password")])
    deny = ""
    if deny_action is not None:
        deny = (
            f'<form method="post" action="{_e(deny_action)}">\n'
            + _hidden([("login", login_id), ("csrf", csrf), ("step", "deny")])
            + '<button type="submit" class="secondary">Deny</button>\n</form>\n'
        )
    if user_code is None:
        intro = f"Sign in to continue to <strong>{_e(client)}</strong>."
    else:
        intro = (
            f"Sign in to approve <strong>{_e(client)}</strong> on the device showing the code"
            f" <strong>{_e(user_code)}</strong>."
        )
    body = f"""\
<p>{intro}</p>
{_error(error)}<form method="post" action="{_e(action)}">
{hidden}<label for="username">User name</label>
<input id="username" name="username" type="text" value="{_e(username)}" required \
autocomplete="username" autocapitalize="none" spellcheck="false"\
{_described_by(error)}{"" if username else " autofocus"}>
<label for="password">Password</label>
<input id="password" name="password" type="password" required \
autocomplete="current-password"{_described_by(error)}{" autofocus" if username else ""}>
<button type="submit">Sign in</button>
</form>
{deny}"""
    return _page("Sign in", body)


def otp_page(
    *, action: str, login_id: str, csrf: str, user: str, error: str | None = None
) -> bytes:
    """The second step: the 6-digit code from the user's authenticator app."""
    hidden = _hidden([("login", login_id), ("csrf", csrf), ("step", "otp")])
    body = f"""\
<p>Signing in as <strong>{_e(user)}</strong>.</p>
{_error(error)}<form method="post" action="{_e(action)}">
{hidden}<label for="code">Code from your authenticator app</label>
<input id="code" name="code" type="text" inputmode="numeric" pattern="[0-9]{{6}}" \
maxlength="6" required autocomplete="one-time-code" autofocus{_described_by(error)}>
<button type="submit">Verify</button>
</form>
"""
    return _page("Enter your code", body)


def device_code_page(*, action: str, user_code: str = "", error: str | None = None) -> bytes:
    """The form where the user types the code their device shows."""
    body = f"""\
<p>Enter the code shown on your device.</p>
{_error(error)}<form method="post" action="{_e(action)}">
<label for="user_code">Code</label>
<input id="user_code" name="user_code" type="text" value="{_e(user_code)}" required \
autocomplete="off" autocapitalize="characters" spellcheck="false" autofocus\
{_described_by(error)}>
<button type="submit">Continue</button>
</form>
"""
    return _page("Connect a device", body)


def device_confirm_page(
    *, action: str, login_id: str, csrf: str, user: str, client: str, user_code: str
) -> bytes:
    """Approve or deny a device for a user who is signed in already."""
    approve = _hidden([("login", login_id), ("csrf", csrf), ("step", "approve")])
    deny = _hidden([("login", login_id), ("csrf", csrf), ("step", "deny")])
    body = f"""\
<p><strong>{_e(client)}</strong> on the device showing the code \
<strong>{_e(user_code)}</strong> asks to sign in as <strong>{_e(user)}</strong>.</p>
<p class="muted">Only approve if you started this on your own device.</p>
<form method="post" action="{_e(action)}">
{approve}<button type="submit">Approve</button>
</form>
<form method="post" action="{_e(action)}">
{deny}<button type="submit" class="secondary">Deny</button>
</form>
"""
    return _page("Approve device", body)


def message_page(title: str, message: str) -> bytes:
    """A page with a title and one paragraph (errors, "signed out", ...)."""
    return _page(title, f"<p>{_e(message)}</p>\n")


def continue_page(url: str) -> bytes:
    """
    The answer to a form posted here that sends the browser to C{url} on
    another origin: a page that goes there at once (C{<meta
    http-equiv="refresh" content="0;url=...">}) with a link for a browser
    that does not refresh.  A redirect would be subject to the page's
    C{form-action 'self'}, and blocked.
    """
    target = _e(quote(url, safe=_URL_SAFE))
    return html_page(
        title="Signing in",
        style=_STYLE,
        head=[
            '<meta name="referrer" content="no-referrer">',
            VIEWPORT_META,
            f'<meta http-equiv="refresh" content="0;url={target}">',
        ],
        main=(
            "<h1>Signing in</h1>\n"
            f'<p><a href="{target}" id="continue">Continue to the application</a></p>\n'
        ),
    )
