"""
Sign-in end to end against providers appproxy did not write:

  - C{oidc-provider} from npm (an OpenID-certified implementation), started
    by the tests: sign-in, client authentication methods, MFA step-up and
    key rotation at the provider;
  - a rogue provider (L{tests.fakeprovider}) that issues the ID tokens an
    attacker would: each is refused with a page naming the step, and nothing
    reaches the app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from appproxy.state.queries import read_sign_ins
from tests.browser import find_forms
from tests.deployment import DOMAIN
from tests.fakeprovider import FakeProvider, serve_tls
from tests.nodeprovider import node_available, start_node_provider
from tests.signin_deployment import LOGIN, backend_headers, start_external

WEB = f"https://web.{DOMAIN}"
CALLBACK = f"https://{LOGIN}/.appproxy/callback"
SECRET = "interop-client-secret-0123456789"

USERS = {
    "248289761001": {
        "password": "correct horse",
        "otp": "424242",
        "preferred_username": "alice",
        "name": "Alice Example",
        "email": "alice@example.com",
        "groups": ["staff", "wiki-editors"],
        "employee_id": "E-1001",
    }
}

APPS = [
    {
        "name": "web",
        "external_url": f"{WEB}/",
        "headers": {
            "X-Remote-User": "preferred_username",
            "X-Remote-Groups": "groups",
            "X-Remote-Email": "email",
            "X-Employee": "employee_id",
            "X-Amr": "amr",
        },
    }
]


class NodeProviderTests(TestCase):
    """Against oidc-provider (npm)."""

    timeout = 90

    def setUp(self) -> None:
        missing = node_available()
        if missing:
            self.fail(missing)

    @inlineCallbacks
    def _start(self, *, client_auth: str = "client_secret_basic", extra_toml: str = "") -> Any:
        state = Path(self.mktemp())
        state.mkdir(parents=True)
        provider = yield start_node_provider(
            reactor=reactor,
            state=state,
            users=USERS,
            clients=[
                {
                    "client_id": "appproxy",
                    "client_secret": SECRET,
                    "redirect_uris": [CALLBACK],
                    "token_endpoint_auth_method": client_auth,
                }
            ],
        )
        self.addCleanup(provider.stop)
        d = yield start_external(
            self,
            issuer=provider.issuer,
            provider_ca_pem=provider.ca_pem,
            provider_address=None,
            client_secret=SECRET,
            client_auth=client_auth,
            apps=APPS,
            extra_toml=extra_toml,
        )
        return provider, d

    @inlineCallbacks
    def _sign_in(self, browser: Any, url: str) -> Any:
        page = yield browser.go(url)
        self.assertEqual(urlsplit(page.url).hostname, "localhost", page.url)
        page = yield browser.submit(page, {"login": "alice", "password": "correct horse"})
        return page

    @inlineCallbacks
    def test_sign_in_headers(self) -> Any:
        """The backend sees the user's claims from oidc-provider as headers."""
        _, d = yield self._start()
        page = yield self._sign_in(d.browser(), f"{WEB}/hello?q=1")
        self.assertEqual(page.url, f"{WEB}/hello?q=1")
        headers = backend_headers(page)
        self.assertEqual(headers["x-remote-user"], ["alice"])
        self.assertEqual(headers["x-remote-groups"], ["staff,wiki-editors"])
        self.assertEqual(headers["x-remote-email"], ["alice@example.com"])
        self.assertEqual(headers["x-employee"], ["E-1001"])
        self.assertEqual(headers["x-amr"], ["pwd"])

    @inlineCallbacks
    def test_client_secret_post(self) -> Any:
        """client_secret_post works as well as the default basic method."""
        _, d = yield self._start(client_auth="client_secret_post")
        page = yield self._sign_in(d.browser(), f"{WEB}/")
        self.assertEqual(backend_headers(page)["x-remote-user"], ["alice"])

    @inlineCallbacks
    def test_mfa_step_up(self) -> Any:
        """
        Policy requires MFA: after a password-only sign-in the browser is sent
        back asking for it (acr_values=mfa), and gets in with pwd+otp.
        """
        _, d = yield self._start(
            extra_toml='[[policies]]\nname = "mfa-everywhere"\ngrant = "mfa"\n'
        )
        browser = d.browser()
        page = yield self._sign_in(browser, f"{WEB}/secret")
        if "password" in {f for form in find_forms(page.text) for f in form.fields}:
            # prompt=login: the provider asks for the password again first.
            page = yield browser.submit(page, {"login": "alice", "password": "correct horse"})
        self.assertIn("otp", find_forms(page.text)[0].fields, page.text[:400])
        page = yield browser.submit(page, {"otp": "424242"})
        self.assertEqual(page.url, f"{WEB}/secret")
        self.assertEqual(backend_headers(page)["x-amr"], ["pwd,otp"])

    @inlineCallbacks
    def test_key_rotation_at_the_provider(self) -> Any:
        """
        The provider rotates its signing key: the next sign-in carries an
        unknown key id, the service fetches the keys again and accepts it.
        """
        provider, d = yield self._start(extra_toml="jwks_refetch_interval = 1")
        page = yield self._sign_in(d.browser(), f"{WEB}/")
        self.assertEqual(backend_headers(page)["x-remote-user"], ["alice"])
        old_kids = set(provider.kids)
        yield provider.rotate_keys()
        self.assertFalse(old_kids & set(provider.kids))
        # The service fetches keys at most once a second here.
        yield deferLater(reactor, 1.1, lambda: None)
        page = yield self._sign_in(d.browser(), f"{WEB}/")
        self.assertEqual(backend_headers(page)["x-remote-user"], ["alice"])


class RogueProviderTests(TestCase):
    """A provider issuing bad ID tokens: every one is refused."""

    timeout = 60

    @inlineCallbacks
    def _start(self) -> Any:
        provider = FakeProvider(
            issuer="https://idp.test", client_secret=SECRET, redirect_uri=CALLBACK
        )
        served = serve_tls(provider, reactor)
        self.addCleanup(served.stop)
        d = yield start_external(
            self,
            issuer="https://idp.test",
            provider_ca_pem=served.ca_pem,
            provider_address=served.address,
            client_secret=SECRET,
            apps=APPS,
        )
        d.extra_ports = {"idp.test": cast(IPv4Address, served.port.getHost()).port}
        return provider, d

    @inlineCallbacks
    def test_bad_tokens_are_refused(self) -> Any:
        """
        alg none, an HMAC keyed with the public key, wrong issuer, audience
        or nonce, an expired token: each ends on a page naming the ID token
        step, is logged, and never reaches the app; a good token then works.
        """
        provider, d = yield self._start()
        hits = d.backend.hits
        expected = {
            "alg-none": "alg",
            "hs256-public-key": "algorithm that is not allowed",
            "wrong-iss": "iss",
            "wrong-aud": "aud",
            "wrong-nonce": "nonce",
            "expired": "expired",
        }
        for mode, words in expected.items():
            provider.mode = mode
            page = yield d.browser().go(f"{WEB}/")
            self.assertEqual(page.status, 401, mode)
            self.assertEqual(urlsplit(page.url).hostname, LOGIN, mode)
            self.assertIn("step: id-token", page.text, mode)
            self.assertIn(words.lower(), page.text.lower(), mode)
        self.assertEqual(d.backend.hits, hits)
        yield d.service.sign_in.sign_in_log.flush()
        events = read_sign_ins(d.state / "appproxy.sqlite")
        self.assertEqual(
            [(e.result, e.step) for e in events], [("failure", "id-token")] * len(expected)
        )
        provider.mode = "good"
        page = yield d.browser().go(f"{WEB}/")
        self.assertEqual(backend_headers(page)["x-remote-user"], ["alice"])

    @inlineCallbacks
    def test_provider_error_is_shown(self) -> Any:
        """The provider refusing the sign-in: a page naming the step, no loop."""
        provider, d = yield self._start()
        provider.authorize_error = ("access_denied", "The user cancelled")
        browser = d.browser()
        page = yield browser.go(f"{WEB}/")
        self.assertEqual(page.status, 401)
        self.assertIn("step: authorization", page.text)
        self.assertIn("access_denied", page.text)
        self.assertLess(len(browser.history), 6)

    @inlineCallbacks
    def test_unsafe_claim_is_never_forwarded(self) -> Any:
        """A claim with CR/LF cannot be injected as a header: 403."""
        provider, d = yield self._start()
        provider.claims = {**provider.claims, "email": "a@example.com\r\nX-Admin: yes"}
        hits = d.backend.hits
        page = yield d.browser().go(f"{WEB}/")
        self.assertEqual(page.status, 403)
        self.assertEqual(d.backend.hits, hits)
