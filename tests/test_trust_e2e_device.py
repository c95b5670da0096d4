"""
Connector registration with an administrator's sign-in (the device
authorization grant, RFC 8628), end to end: C{appproxy-connector register}
prints a URL and a code, an administrator approves in a browser, and the
service checks the ID token (signature, issuer, audience, expiry) and the
administrator role before it signs (L{tests.trust_deployment}).

Against the independent C{oidc-provider} (L{tests.nodeprovider}), approved
in Chromium (L{tests.chromium}), and refused for a user without the role;
against the service's own built-in provider, approved with form posts
(L{tests.browser}).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.browser import Browser
from tests.chromium import ChromiumSession, run_in_chromium
from tests.nodeprovider import device_client, node_available, start_node_provider
from tests.test_daemons import Process
from tests.trust_deployment import (
    ADMIN_ROLE,
    DEVICE_CLIENT_ID,
    PASSWORD,
    USER_CODE,
    WAIT,
    TrustDeployment,
    start,
)
from tests.websocket_clients import wait_until

NODE_USERS = {
    "admin": {"password": PASSWORD, "preferred_username": "ada", "roles": [ADMIN_ROLE]},
    "bob": {"password": PASSWORD, "preferred_username": "bob", "roles": ["editor"]},
}


@inlineCallbacks
def device_prompt(process: Process) -> Any:
    """Wait for the URL and the code C{register} prints; both."""
    match = yield wait_until(
        lambda: USER_CODE.search(process.output()) or not process.running,
        "the device flow's code",
        WAIT,
    )
    assert process.running, process.describe()
    words = process.output().split()
    urls = [w for w in words if w.startswith("https://") and w.endswith("/device")]
    assert urls, process.describe()
    return urls[0], match.group(0)


def approve_in_chromium(url: str, code: str, login: str) -> Any:
    """The administrator's part at oidc-provider, in Chromium: code, approve, sign in."""

    def scenario(session: ChromiumSession) -> str:
        session.step("open the verification page", lambda page: page.goto(url))

        def enter_code(page: Any) -> None:
            page.fill("input[name=user_code]", code)
            page.click("button[type=submit]")
            page.wait_for_selector("#approve")

        session.step("enter the code", enter_code)
        session.step("approve the device", lambda page: page.click("#approve"))

        def sign_in(page: Any) -> None:
            page.fill("input[name=login]", login)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("text=Device approved")

        session.step("sign in", sign_in)
        return str(session.page.content())

    return scenario


class DeviceFlowTests(TestCase):
    timeout = 150

    @inlineCallbacks
    def start_with_node_provider(self) -> Any:
        problem = node_available()
        if problem is not None:
            self.fail(problem)
        state = Path(self.mktemp())
        state.mkdir(parents=True)
        provider = yield start_node_provider(
            reactor=reactor,
            state=state,
            users=NODE_USERS,
            clients=[
                {
                    "client_id": "appproxy",
                    "client_secret": "a-client-secret-of-some-length-0123456789",
                    "redirect_uris": ["https://login.appproxy.test/.appproxy/callback"],
                },
                device_client(DEVICE_CLIENT_ID),
            ],
            device_interval=1,
        )
        self.addCleanup(provider.stop)
        d = yield start(self, provider=provider)
        return provider, d

    @inlineCallbacks
    def registered(self, d: TrustDeployment, process: Process) -> Any:
        status = yield process.ended(WAIT)
        self.assertEqual(status, (0, None), f"{process.describe()}\n{d.tails()}")

    @inlineCallbacks
    def test_oidc_provider_in_chromium(self) -> Any:
        """
        Against oidc-provider: an administrator (the roles claim holds the
        role) approves the device in Chromium; the connector is registered
        (audited with the administrator's subject and name) and serves
        requests. A user without the role approves another: refused with a
        message naming the claim and the value, audited register-refused.
        """
        provider, d = yield self.start_with_node_provider()
        process = d.register("one")
        url, code = yield device_prompt(process)
        self.assertTrue(url.startswith(provider.issuer), url)
        html = yield run_in_chromium(self, approve_in_chromium(url, code, "admin"))
        self.assertIn("Device approved", html)
        yield self.registered(d, process)
        one = d.named["one"]
        registered = yield d.audit("register")
        self.assertEqual([e["connector_id"] for e in registered], [one.id])
        self.assertIn("oidc:admin", registered[0]["actor"])
        self.assertIn("ada", registered[0]["actor"])

        process = d.register("two")
        url, code = yield device_prompt(process)
        browser = Browser([provider.ca_pem])
        page = yield browser.go(url)
        page = yield browser.submit(page, {"user_code": code})
        page = yield browser.submit(page, {})
        page = yield browser.submit(page, {"login": "bob", "password": PASSWORD})
        self.assertIn("Device approved", page.text)
        status = yield process.ended(WAIT)
        self.assertEqual(status, (1, None), process.describe())
        self.assertIn("not an administrator", process.output())
        self.assertIn(ADMIN_ROLE, process.output())
        self.assertNotIn("Traceback", process.output())
        self.assertFalse((d.root / "two" / "connector.pem").exists())
        refused = yield d.audit("register-refused")
        self.assertEqual(len(refused), 1, refused)
        self.assertIn("bob", str(refused[0]))

        yield d.start_connector_daemon(one, connections=1)
        response = yield d.client().get(d.url("web", "/device"), timeout=WAIT)
        self.assertEqual(response.code, 200)

    @inlineCallbacks
    def test_builtin_provider(self) -> Any:
        """
        Against the service's own provider: the administrator enters the
        code, signs in and the device is approved; the connector registered
        with the device client's token serves requests.
        """
        d = yield start(self, provider="builtin", users={"root": [ADMIN_ROLE]})
        process = d.register("one")
        url, code = yield device_prompt(process)
        self.assertEqual(url, f"https://localhost:{d.public_port}/device")
        browser = Browser([d.ca.cert_pem], {"localhost": d.public_port})
        page = yield browser.go(url)
        page = yield browser.submit(page, {"user_code": code})
        page = yield browser.submit(page, {"username": "root", "password": PASSWORD})
        self.assertIn("Device approved", page.text)
        yield self.registered(d, process)
        one = d.named["one"]
        registered = yield d.audit("register")
        self.assertEqual([e["connector_id"] for e in registered], [one.id])
        self.assertIn("oidc:", registered[0]["actor"])
        yield d.start_connector_daemon(one, connections=1)
        response = yield d.client().get(d.url("web", "/builtin"), timeout=WAIT)
        self.assertEqual(response.code, 200)
