"""
What a person does in the browser, as steps of a L{ChromiumSession}: sign in
with the built-in provider (password, then the one-time code if asked) or
with C{oidc-provider}'s forms, and read what the app received.

Every wait is on a condition with a timeout (Playwright's, bounded by
L{tests.chromium.STEP_TIMEOUT_MS}); nothing sleeps.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from tests.chromium import ChromiumSession

__all__ = [
    "echoed",
    "is_on",
    "open_sign_in",
    "sign_in_builtin",
    "submit_code",
    "wait_until_on",
]


def is_on(url: str, prefix: str) -> bool:
    return url == prefix or url.startswith(prefix)


def wait_until_on(session: ChromiumSession, name: str, prefix: str) -> None:
    """Wait until the page is at C{prefix...} and has loaded."""

    def wait(page: Any) -> None:
        page.wait_for_url(lambda url: is_on(url, prefix))
        page.wait_for_load_state("load")

    session.step(name, wait)


def open_sign_in(session: ChromiumSession, url: str, login_host: str) -> None:
    """Open C{url} of an app: the browser lands on the sign-in form."""
    session.step("open the app", lambda page: page.goto(url))

    def on_form(page: Any) -> None:
        page.wait_for_selector("input[name=password]")
        host = urlsplit(page.url).hostname
        assert host == login_host, f"the sign-in form is on {host}, not {login_host}"

    session.step("the sign-in form", on_form)


def sign_in_builtin(session: ChromiumSession, user: str, password: str) -> None:
    """Fill and send the built-in provider's user name and password form."""

    def fill(page: Any) -> None:
        page.fill("#username", user)
        page.fill("#password", password)
        page.get_by_role("button", name="Sign in").click()

    session.step("send the password", fill)


def submit_code(session: ChromiumSession, code: str, field: str = "#code") -> None:
    """Fill and send a one-time code form."""

    def fill(page: Any) -> None:
        page.wait_for_selector(field)
        page.fill(field, code)
        page.get_by_role("button", name="Verify").click()

    session.step("send the one-time code", fill)


def echoed(session: ChromiumSession) -> dict[str, Any]:
    """The request the app received, from the JSON page it answered."""

    def read(page: Any) -> dict[str, Any]:
        text = page.inner_text("body")
        try:
            value: dict[str, Any] = json.loads(text)
        except ValueError:
            raise AssertionError(f"not the app's JSON: {text[:300]!r}") from None
        return value

    return session.step("read what the app received", read)
