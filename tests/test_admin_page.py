"""
The admin page in a real browser: Debian's Chromium driven by Playwright
(L{tests.chromium}), against the service and connector as C{twistd}
subprocesses (L{tests.browser_deployment}) with C{[admin] listen} and
C{url}.  An administrator of the built-in provider signs in on the admin
listener and sees the connector and the sign-ins; a sign-in made by another
client appears on the open page without a reload; someone else gets 403;
without the cookie the page sends the browser to sign in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.browser_deployment import DOMAIN, Daemons, free_ports, start_daemons
from tests.browser_flows import is_on, sign_in_builtin, wait_until_on
from tests.chromium import STEP_TIMEOUT_MS, ChromiumSession, run_in_chromium

ADMIN_ROLE = "Application Administrator"
USERS = {
    "root": {"password": "root password 1", "roles": (ADMIN_ROLE,)},
    "alice": {"password": "correct horse", "groups": ("staff",)},
}


def _row_with(table: str, text: str) -> str:
    return f"#{table} tbody tr:has(td:text-is({text!r}))"


class AdminPageTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_admin_page(self) -> Any:
        (admin_port,) = free_ports(1)
        admin = f"https://admin.{DOMAIN}:{admin_port}"

        def edit(config: Path) -> None:
            config.write_text(
                config.read_text()
                + f'\n[admin]\nlisten = "tcp:{admin_port}:interface=127.0.0.1"\nurl = "{admin}"\n'
            )

        d = yield start_daemons(self, users=USERS, edit=edit)

        def scenario(session: ChromiumSession) -> None:
            self._scenario(session, d, admin)

        yield run_in_chromium(self, scenario)
        self.assertNotIn("Traceback", d.service.output(), d.describe())

    def _scenario(self, session: ChromiumSession, d: Daemons, admin: str) -> None:
        login = f"https://{d.login_host}:{d.public}/"

        # Without the cookie: the data is refused, the page sends to sign in.
        def refused(page: Any) -> None:
            response = page.goto(f"{admin}/admin/v1/overview")
            assert response.status == 401, response.status
            page.goto(f"{admin}/admin/")
            page.wait_for_selector("input[name=password]")
            assert is_on(page.url, login), page.url

        session.step("no cookie: sent to sign in", refused)
        sign_in_builtin(session, "root", "root password 1")
        wait_until_on(session, "on the admin page", f"{admin}/admin/")
        admin_page = session.page
        navigations = len(session.navigations)

        def sees(page: Any) -> None:
            page.wait_for_selector(_row_with("audit", "admin-sign-in"))
            page.wait_for_selector("#connectors tbody tr")
            page.wait_for_selector(_row_with("apps", "web"))
            assert "oidc:" in page.text_content("#who"), page.text_content("#who")
            cookies = page.context.cookies()
            mine = [c for c in cookies if c["name"] == "appproxy-admin"]
            assert len(mine) == 1, cookies
            cookie = mine[0]
            assert cookie["httpOnly"] and cookie["secure"], cookie
            assert cookie["sameSite"] == "Strict" and cookie["path"] == "/admin/", cookie
            violations = [line for line in session.console if "Content Security Policy" in line]
            assert not violations, violations

        session.step("the administrator sees connectors and sign-ins", sees)

        # Another client (a browser context of its own) signs in to the app.
        def other_client(page: Any) -> None:
            context = page.context.browser.new_context(ignore_https_errors=True)
            try:
                other = context.new_page()
                other.goto(d.url("/"))
                other.wait_for_selector("input[name=password]")
                other.fill("#username", "alice")
                other.fill("#password", "correct horse")
                other.get_by_role("button", name="Sign in").click()
                other.wait_for_url(lambda url: is_on(url, d.url("/")))
            finally:
                context.close()

        session.step("another client signs in", other_client)

        def appears(page: Any) -> None:
            page.wait_for_selector(_row_with("sign_ins", "alice"), timeout=STEP_TIMEOUT_MS)
            assert page is admin_page
            assert len(session.navigations) == navigations, session.navigations

        session.step("the new sign-in appears without reload", appears)

        # Someone who is not an administrator: 403 after the callback.
        session.new_page()
        session.step("alice opens the admin page", lambda page: page.goto(f"{admin}/admin/"))
        sign_in_builtin(session, "alice", "correct horse")

        def forbidden(page: Any) -> None:
            page.wait_for_url(lambda url: is_on(url, f"{admin}/admin/callback"))
            page.wait_for_selector("text=not an administrator")
            statuses = [status for status, url in session.documents if "/admin/callback" in url]
            assert statuses == [403], session.documents
            response = page.goto(f"{admin}/admin/v1/overview")
            assert response.status == 401, response.status

        session.step("alice is refused", forbidden)

        # The refusal shows on the administrator's page (still open, not reloaded).
        session.page = admin_page

        def refusal_shown(page: Any) -> None:
            page.wait_for_selector(_row_with("audit", "admin-sign-in-refused"))
            assert "alice" in page.text_content(_row_with("audit", "admin-sign-in-refused"))

        session.step("the refusal appears on the admin page", refusal_shown)

        def sign_out(page: Any) -> None:
            page.get_by_role("button", name="Sign out").click()
            page.wait_for_selector("text=You are signed out.")
            assert not [c for c in page.context.cookies() if c["name"] == "appproxy-admin"]
            response = page.goto(f"{admin}/admin/v1/overview")
            assert response.status == 401, response.status

        session.step("sign out", sign_out)
