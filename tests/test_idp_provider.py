"""
Tests for L{appproxy.idp.provider}: the built-in OpenID provider, driven over
real HTTP on real TLS on 127.0.0.1 by a scripted browser and relying party;
and the in-memory stores and signing key it uses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import stat
import threading
import time
import urllib.parse
from collections.abc import Generator, Mapping
from html.parser import HTMLParser
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any, cast

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorSSL, IReactorThreads
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool

from appproxy.daemon import pki
from appproxy.idp import pages, totp
from appproxy.idp.memory import ExpiringMap, FailureCounter
from appproxy.idp.passwords import hash_password
from appproxy.idp.provider import (
    ACR_MFA,
    ACR_PWD,
    ClientRegistration,
    IdentityProvider,
    ProviderSettings,
)
from appproxy.idp.signing import load_or_create_signing_key
from appproxy.idp.users import UserStore, add_user, update_user
from tests.browser import meta_refresh
from tests.deployment import LoopbackTLS

HOST = "login.appproxy.test"
APP_CALLBACK = "https://wiki.appproxy.test/.appproxy/callback"
OTHER_CALLBACK = "https://crm.appproxy.test/.appproxy/callback"
WIKI_SECRET = "wiki-secret-0123456789"
CRM_SECRET = "crm-secret-0123456789"
BOB_SECRET = totp.generate_secret()
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _basic(client_id: str, secret: str) -> str:
    raw = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


# ---------------------------------------------------------------------------
# a scripted browser


@attrs.frozen
class Form:
    action: str
    fields: Mapping[str, str]


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._action: str | None = None
        self._fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        attrs_ = {k: v or "" for k, v in attributes}
        if tag == "form":
            self._action, self._fields = attrs_.get("action", ""), {}
        elif tag == "input" and self._action is not None and "name" in attrs_:
            self._fields[attrs_["name"]] = attrs_.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self._action is not None:
            self.forms.append(Form(self._action, self._fields))
            self._action = None


@attrs.frozen
class Response:
    status: int
    headers: Mapping[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)

    def forms(self) -> list[Form]:
        parser = _FormParser()
        parser.feed(self.text)
        return parser.forms

    def form(self) -> Form:
        return self.forms()[0]

    @property
    def continue_url(self) -> str | None:
        """
        Where the provider's page after a posted form sends the browser on
        (its immediate meta refresh), if it is such a page.
        """
        if self.status != 200:
            return None
        return meta_refresh(self.text)

    def location_query(self) -> dict[str, str]:
        location = self.header("location") or self.continue_url
        assert location is not None, (self.status, self.body)
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def assert_continues(response: Response) -> None:
    """A posted form finished the sign-in: a page moving on to the client."""
    assert response.status == 200 and response.continue_url is not None, (
        response.status,
        response.body[:500],
    )


class Browser:
    """Keeps cookies (by name), sends them back, never follows redirects."""

    def __init__(self, client: HTTPClient, base: str) -> None:
        self.client = client
        self.base = base
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []

    @inlineCallbacks
    def request(
        self,
        method: str,
        path: str,
        *,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        cookies: bool = True,
    ) -> Generator[Deferred[Any], Any, Response]:
        url = path if path.startswith("https://") else self.base + path
        sent = dict(headers or {})
        if cookies and self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        request_headers: dict[bytes | str, list[bytes | str]] = {k: [v] for k, v in sent.items()}
        response = yield self.client.request(
            method,
            url,
            data=dict(data) if data is not None else None,
            headers=request_headers,
            allow_redirects=False,
        )
        body = yield response.content()
        raw_headers = {
            k.decode("latin-1").lower(): [v.decode("latin-1") for v in vs]
            for k, vs in response.headers.getAllRawHeaders()
        }
        for set_cookie in raw_headers.get("set-cookie", []):
            self.set_cookie_headers.append(set_cookie)
            name, _, rest = set_cookie.partition("=")
            value = rest.split(";")[0]
            if "max-age=0" in set_cookie.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return Response(response.code, raw_headers, body)

    def get(self, path: str, **kwargs: Any) -> Deferred[Response]:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, data: Mapping[str, str], **kwargs: Any) -> Deferred[Response]:
        return self.request("POST", path, data=data, **kwargs)

    def submit(self, form: Form, **values: str) -> Deferred[Response]:
        return self.post(form.action, {**form.fields, **values})


@attrs.frozen
class AuthRequest:
    params: Mapping[str, str]
    verifier: str

    @property
    def path(self) -> str:
        return "/authorize?" + urllib.parse.urlencode(self.params)


def auth_request(**overrides: str | None) -> AuthRequest:
    verifier = secrets.token_urlsafe(48)
    params: dict[str, str | None] = {
        "client_id": "wiki",
        "redirect_uri": APP_CALLBACK,
        "response_type": "code",
        "scope": "openid profile email",
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
        "code_challenge": _b64url(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return AuthRequest({k: v for k, v in params.items() if v is not None}, verifier)


# ---------------------------------------------------------------------------
# the provider on loopback TLS


class ProviderTestCase(TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)
        self.users_path = self.dir / "users.json"
        add_user(
            self.users_path,
            "alice",
            "correct horse",
            name="Alice Doe",
            email="alice@example.com",
            groups=("staff", "wiki-editors"),
            roles=("editor",),
        )
        add_user(self.users_path, "bob", "battery staple", totp_secret=BOB_SECRET)
        self.clock = Clock()
        self.clock.advance(time.time())
        self.attempts: list[tuple[str, str, bool, str]] = []

        ca = pki.generate_ca("idp test CA")
        leaf = pki.issue_server_certificate(ca, [HOST])
        self.site = server.Site(resource.Resource())
        self.port = cast(IReactorSSL, reactor).listenSSL(
            0,
            self.site,
            PrivateCertificate.loadPEM(leaf.cert_pem + leaf.key_pem).options(),
            interface="127.0.0.1",
        )
        self.addCleanup(self.port.stopListening)
        port = cast(IPv4Address, self.port.getHost()).port
        self.issuer = f"https://{HOST}:{port}"
        self.settings = ProviderSettings(
            issuer=self.issuer,
            clients=(
                ClientRegistration(
                    client_id="wiki", client_secret=WIKI_SECRET, redirect_uris=(APP_CALLBACK,)
                ),
                ClientRegistration(
                    client_id="crm",
                    client_secret=CRM_SECRET,
                    redirect_uris=(OTHER_CALLBACK,),
                    auth_methods=("client_secret_post",),
                ),
                ClientRegistration(client_id="appproxy-connector", client_secret=None),
            ),
        )
        self.provider = IdentityProvider(
            self.settings,
            self.users_path,
            self.dir / "idp-signing-key.pem",
            self.clock,
            cast(IReactorThreads, reactor),
            on_sign_in_attempt=lambda *attempt: self.attempts.append(attempt),
        )
        self.site.resource = self.provider.resource

        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent.usingEndpointFactory(reactor, LoopbackTLS(port, ca.cert_pem), pool=pool)
        # The scripted browsers keep their own cookies: treq's jar keeps none.
        # treq types the jar as its own IndexableCookieJar; any CookieJar works.
        self.client = HTTPClient(
            agent,
            cookiejar=CookieJar(DefaultCookiePolicy(allowed_domains=[])),  # type: ignore[arg-type]
        )
        return None

    def browser(self) -> Browser:
        return Browser(self.client, self.issuer)

    def rp(self) -> Browser:
        """The relying party's HTTP client (no cookies)."""
        return Browser(self.client, self.issuer)

    @inlineCallbacks
    def sign_in(
        self,
        browser: Browser,
        request: AuthRequest,
        username: str = "alice",
        password: str = "correct horse",
    ) -> Generator[Deferred[Any], Any, Response]:
        """GET /authorize, fill in the form: the response to the form."""
        page = yield browser.get(request.path)
        self.assertEqual(page.status, 200, page.body)
        response = yield browser.submit(page.form(), username=username, password=password)
        return response

    @inlineCallbacks
    def exchange(
        self,
        code: str,
        request: AuthRequest,
        *,
        client: str = "wiki",
        secret: str = WIKI_SECRET,
        verifier: str | None = None,
        method: str = "basic",
    ) -> Generator[Deferred[Any], Any, Response]:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": request.params["redirect_uri"],
            "code_verifier": verifier if verifier is not None else request.verifier,
        }
        headers = {}
        if method == "basic":
            headers["Authorization"] = _basic(client, secret)
        else:
            data.update(client_id=client, client_secret=secret)
        response = yield self.rp().post("/token", data, headers=headers)
        return response

    @inlineCallbacks
    def id_token_claims(
        self, token: str, audience: str = "wiki"
    ) -> Generator[Deferred[Any], Any, dict[str, Any]]:
        """Verify C{token} with PyJWT against the published JWK set."""
        jwks = yield self.rp().get("/jwks")
        key_set = jwt.PyJWKSet.from_dict(jwks.json())
        kid = jwt.get_unverified_header(token)["kid"]
        (key,) = [key for key in key_set.keys if key.key_id == kid]
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=["ES256"],
            audience=audience,
            issuer=self.issuer,
            leeway=3600,  # the provider's clock may have been moved forward
        )
        return claims

    @inlineCallbacks
    def full_flow(
        self, browser: Browser, **overrides: str | None
    ) -> Generator[Deferred[Any], Any, dict[str, Any]]:
        """Sign alice in and return the verified ID token's claims."""
        request = auth_request(**overrides)
        done = yield self.sign_in(browser, request)
        assert_continues(done)
        tokens = yield self.exchange(done.location_query()["code"], request)
        self.assertEqual(tokens.status, 200, tokens.body)
        claims = yield self.id_token_claims(tokens.json()["id_token"])
        return claims


class DiscoveryTests(ProviderTestCase):
    @inlineCallbacks
    def test_discovery(self) -> Generator[Deferred[Any], Any, None]:
        response = yield self.rp().get("/.well-known/openid-configuration")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("content-type"), "application/json")
        document = response.json()
        issuer = self.issuer
        self.assertEqual(document["issuer"], issuer)
        for key, path in [
            ("authorization_endpoint", "/authorize"),
            ("token_endpoint", "/token"),
            ("jwks_uri", "/jwks"),
            ("userinfo_endpoint", "/userinfo"),
            ("end_session_endpoint", "/end-session"),
            ("device_authorization_endpoint", "/device_authorization"),
        ]:
            self.assertEqual(document[key], issuer + path)
        self.assertEqual(document["response_types_supported"], ["code"])
        self.assertEqual(
            document["grant_types_supported"],
            ["authorization_code", "urn:ietf:params:oauth:grant-type:device_code"],
        )
        self.assertEqual(document["subject_types_supported"], ["public"])
        self.assertEqual(document["id_token_signing_alg_values_supported"], ["ES256"])
        self.assertEqual(document["code_challenge_methods_supported"], ["S256"])
        self.assertEqual(
            document["token_endpoint_auth_methods_supported"],
            ["client_secret_basic", "client_secret_post", "none"],
        )
        self.assertIn("openid", document["scopes_supported"])
        for claim in ["sub", "amr", "acr", "nonce", "groups", "roles", "email", "name"]:
            self.assertIn(claim, document["claims_supported"])
        self.assertIn(ACR_MFA, document["acr_values_supported"])
        self.assertIn("mfa", document["acr_values_supported"])
        self.assertIs(document["authorization_response_iss_parameter_supported"], True)
        # Every endpoint named is served.
        jwks = yield self.rp().get("/jwks")
        self.assertEqual(jwks.status, 200)

    @inlineCallbacks
    def test_jwks(self) -> Generator[Deferred[Any], Any, None]:
        response = yield self.rp().get("/jwks")
        (key,) = response.json()["keys"]
        self.assertEqual(
            {k: key[k] for k in ("kty", "crv", "use", "alg")},
            {"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256"},
        )
        self.assertNotIn("d", key)
        # kid is the RFC 7638 thumbprint.
        canonical = json.dumps(
            {k: key[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
        )
        self.assertEqual(key["kid"], _b64url(hashlib.sha256(canonical.encode()).digest()))

    @inlineCallbacks
    def test_unknown_path(self) -> Generator[Deferred[Any], Any, None]:
        for path in ["/", "/nope", "/authorize/extra", "/.well-known/nope"]:
            response = yield self.rp().get(path)
            self.assertEqual(response.status, 404, path)

    @inlineCallbacks
    def test_wrong_method(self) -> Generator[Deferred[Any], Any, None]:
        response = yield self.rp().get("/token")
        self.assertEqual(response.status, 405)
        self.assertEqual(response.header("allow"), "POST")


class CodeFlowTests(ProviderTestCase):
    @inlineCallbacks
    def test_full_flow(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        request = auth_request()
        page = yield browser.get(request.path)
        self.assertEqual(page.status, 200)
        self.assertEqual(page.header("content-security-policy"), CSP)
        self.assertEqual(page.header("x-frame-options"), "DENY")
        self.assertEqual(page.header("cache-control"), "no-store")
        self.assertEqual(page.header("content-type"), "text/html; charset=utf-8")
        self.assertNotIn("<script", page.text)
        self.assertNotIn("http://", page.text)
        form = page.form()
        self.assertEqual(form.action, "/authorize")
        self.assertEqual(set(form.fields), {"login", "csrf", "step", "username", "password"})
        self.assertIn('autocomplete="current-password"', page.text)
        self.assertIn('<label for="password">', page.text)

        done = yield browser.submit(form, username="alice", password="correct horse")
        assert_continues(done)
        # A page, never a cross-origin redirect after the form's POST (form-action 'self').
        self.assertIsNone(done.header("location"))
        self.assertEqual(done.header("content-security-policy"), CSP)
        self.assertEqual(done.header("cache-control"), "no-store")
        location = done.continue_url
        assert location is not None
        self.assertTrue(location.startswith(APP_CALLBACK + "?"))
        query = done.location_query()
        self.assertEqual(set(query), {"code", "state", "iss"})
        self.assertEqual(query["state"], request.params["state"])
        self.assertEqual(query["iss"], self.issuer)

        sso = [c for c in browser.set_cookie_headers if c.startswith("__Host-appproxy-idp=")]
        self.assertEqual(len(sso), 1)
        attributes = {part.strip().lower() for part in sso[0].split(";")[1:]}
        self.assertEqual(attributes, {"path=/", "secure", "httponly", "samesite=lax"})

        tokens = yield self.exchange(query["code"], request)
        self.assertEqual(tokens.status, 200, tokens.body)
        self.assertEqual(tokens.header("cache-control"), "no-store")
        document = tokens.json()
        self.assertEqual(document["token_type"], "Bearer")
        self.assertEqual(document["expires_in"], 300)
        claims = yield self.id_token_claims(document["id_token"])
        now = int(self.clock.seconds())
        self.assertEqual(claims["iss"], self.issuer)
        self.assertEqual(claims["sub"], "alice")
        self.assertEqual(claims["aud"], "wiki")
        self.assertEqual(claims["azp"], "wiki")
        self.assertEqual(claims["nonce"], request.params["nonce"])
        self.assertEqual(claims["amr"], ["pwd"])
        self.assertEqual(claims["acr"], ACR_PWD)
        self.assertEqual(claims["iat"], now)
        self.assertEqual(claims["exp"], now + 300)
        self.assertEqual(claims["auth_time"], now)
        self.assertEqual(claims["preferred_username"], "alice")
        self.assertEqual(claims["name"], "Alice Doe")
        self.assertEqual(claims["email"], "alice@example.com")
        self.assertEqual(claims["groups"], ["staff", "wiki-editors"])
        self.assertEqual(claims["roles"], ["editor"])
        at_hash = hashlib.sha256(document["access_token"].encode()).digest()[:16]
        self.assertEqual(claims["at_hash"], _b64url(at_hash))
        self.assertEqual(self.attempts, [("alice", "127.0.0.1", True, "password")])

        info = yield self.rp().get(
            "/userinfo", headers={"Authorization": f"Bearer {document['access_token']}"}
        )
        self.assertEqual(info.status, 200)
        self.assertEqual(info.json()["sub"], "alice")
        self.assertEqual(info.json()["groups"], ["staff", "wiki-editors"])

    @inlineCallbacks
    def test_wrong_password(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        request = auth_request()
        for username, password in [
            ("alice", "wrong horse"),
            ("mallory", "correct horse"),
        ]:
            response = yield self.sign_in(browser, request, username, password)
            self.assertEqual(response.status, 200)
            self.assertIsNone(response.header("location"))
            self.assertIn("Incorrect user name or password", response.text)
            self.assertIn('role="alert"', response.text)
            self.assertEqual(response.form().fields["username"], username)
        self.assertNotIn("__Host-appproxy-idp", browser.cookies)
        self.assertEqual(
            self.attempts,
            [
                ("alice", "127.0.0.1", False, "password"),
                ("mallory", "127.0.0.1", False, "password"),
            ],
        )

    @inlineCallbacks
    def test_password_checked_in_a_thread(self) -> Generator[Deferred[Any], Any, None]:
        """scrypt must not block the reactor."""
        threads: list[threading.Thread] = []
        real = UserStore.verify_password

        def recording(store: UserStore, name: str, password: str) -> Any:
            threads.append(threading.current_thread())
            return real(store, name, password)

        self.patch(UserStore, "verify_password", recording)
        done = yield self.sign_in(self.browser(), auth_request())
        assert_continues(done)
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.main_thread())

    @inlineCallbacks
    def test_failures_are_pages(self) -> Generator[Deferred[Any], Any, None]:
        """A failing hook is logged and ignored; a failing check is a 500 page."""

        def broken_hook(*attempt: object) -> None:
            raise RuntimeError("hook")

        self.provider.on_sign_in_attempt = broken_hook
        done = yield self.sign_in(self.browser(), auth_request())
        assert_continues(done)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

        def broken(*args: object) -> None:
            raise OSError("disk")

        self.patch(UserStore, "verify_password", broken)
        failed = yield self.sign_in(self.browser(), auth_request())
        self.assertEqual(failed.status, 500)
        self.assertIn("Sign-in failed", failed.text)
        self.assertEqual(failed.header("content-security-policy"), CSP)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    @inlineCallbacks
    def test_retry_on_same_form(self) -> Generator[Deferred[Any], Any, None]:
        """After a wrong password the form that comes back works."""
        browser = self.browser()
        request = auth_request()
        failed = yield self.sign_in(browser, request, "alice", "wrong horse")
        done = yield browser.submit(failed.form(), password="correct horse")
        assert_continues(done)
        self.assertIn("code", done.location_query())

    @inlineCallbacks
    def test_disabled_user(self) -> Generator[Deferred[Any], Any, None]:
        update_user(self.users_path, "alice", lambda alice: attrs.evolve(alice, disabled=True))
        response = yield self.sign_in(self.browser(), auth_request())
        self.assertEqual(response.status, 200)
        self.assertIn("Incorrect user name or password", response.text)

    @inlineCallbacks
    def test_lockout(self) -> Generator[Deferred[Any], Any, None]:
        """5 failures lock the user name for the rest of the 10 minutes."""
        browser = self.browser()
        request = auth_request()
        for _ in range(5):
            response = yield self.sign_in(browser, request, "alice", "wrong horse")
            self.assertIn("Incorrect user name or password", response.text)
        locked = yield self.sign_in(browser, request, "alice", "correct horse")
        self.assertEqual(locked.status, 200)
        self.assertIn("Incorrect user name or password", locked.text)
        self.assertEqual(self.attempts[-1], ("alice", "127.0.0.1", False, "password"))
        # Another user from the same address is not locked (yet).
        other = yield self.sign_in(self.browser(), auth_request(), "bob", "battery staple")
        self.assertIn("Enter your code", other.text)
        self.clock.advance(601)
        done = yield self.sign_in(browser, auth_request())
        assert_continues(done)

    @inlineCallbacks
    def test_state_and_nonce_optional(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        request = auth_request(state=None, nonce=None)
        done = yield self.sign_in(browser, request)
        self.assertEqual(set(done.location_query()), {"code", "iss"})
        tokens = yield self.exchange(done.location_query()["code"], request)
        claims = yield self.id_token_claims(tokens.json()["id_token"])
        self.assertNotIn("nonce", claims)

    @inlineCallbacks
    def test_login_hint_escaped(self) -> Generator[Deferred[Any], Any, None]:
        hint = '"><script>alert(1)</script>'
        page = yield self.browser().get(auth_request(login_hint=hint).path)
        self.assertNotIn("<script>", page.text)
        self.assertIn("&quot;&gt;&lt;script&gt;", page.text)
        self.assertEqual(page.form().fields["username"], hint)


class CodeExchangeTests(ProviderTestCase):
    @inlineCallbacks
    def code(self, request: AuthRequest) -> Generator[Deferred[Any], Any, str]:
        done = yield self.sign_in(self.browser(), request)
        code: str = done.location_query()["code"]
        return code

    @inlineCallbacks
    def test_replayed_code(self) -> Generator[Deferred[Any], Any, None]:
        request = auth_request()
        code = yield self.code(request)
        first = yield self.exchange(code, request)
        self.assertEqual(first.status, 200)
        second = yield self.exchange(code, request)
        self.assertEqual(second.status, 400)
        self.assertEqual(second.json()["error"], "invalid_grant")
        self.assertEqual(second.header("cache-control"), "no-store")
        # The replay revoked the tokens the code gave.
        info = yield self.rp().get(
            "/userinfo", headers={"Authorization": f"Bearer {first.json()['access_token']}"}
        )
        self.assertEqual(info.status, 401)

    @inlineCallbacks
    def test_wrong_verifier(self) -> Generator[Deferred[Any], Any, None]:
        request = auth_request()
        code = yield self.code(request)
        wrong = yield self.exchange(code, request, verifier=secrets.token_urlsafe(48))
        self.assertEqual((wrong.status, wrong.json()["error"]), (400, "invalid_grant"))
        # The code is spent even so.
        right = yield self.exchange(code, request)
        self.assertEqual((right.status, right.json()["error"]), (400, "invalid_grant"))

    @inlineCallbacks
    def test_missing_verifier(self) -> Generator[Deferred[Any], Any, None]:
        request = auth_request()
        code = yield self.code(request)
        response = yield self.rp().post(
            "/token",
            {"grant_type": "authorization_code", "code": code, "redirect_uri": APP_CALLBACK},
            headers={"Authorization": _basic("wiki", WIKI_SECRET)},
        )
        self.assertEqual((response.status, response.json()["error"]), (400, "invalid_request"))

    @inlineCallbacks
    def test_expired_code(self) -> Generator[Deferred[Any], Any, None]:
        request = auth_request()
        code = yield self.code(request)
        self.clock.advance(61)
        response = yield self.exchange(code, request)
        self.assertEqual((response.status, response.json()["error"]), (400, "invalid_grant"))

    @inlineCallbacks
    def test_code_bound_to_client(self) -> Generator[Deferred[Any], Any, None]:
        request = auth_request()
        code = yield self.code(request)
        response = yield self.exchange(
            code, request, client="crm", secret=CRM_SECRET, method="post"
        )
        self.assertEqual((response.status, response.json()["error"]), (400, "invalid_grant"))

    @inlineCallbacks
    def test_client_secret_post(self) -> Generator[Deferred[Any], Any, None]:
        request = auth_request()
        code = yield self.code(request)
        response = yield self.exchange(code, request, method="post")
        self.assertEqual(response.status, 200, response.body)

    @inlineCallbacks
    def test_client_auth_failures(self) -> Generator[Deferred[Any], Any, None]:
        request = auth_request()
        for kwargs in [
            {"secret": "wrong-secret-0123456789"},
            {"secret": "wrong-secret-0123456789", "method": "post"},
            {"client": "nobody"},
            # crm may only use client_secret_post.
            {"client": "crm", "secret": CRM_SECRET, "method": "basic"},
        ]:
            code = yield self.code(request)
            response = yield self.exchange(code, request, **kwargs)
            self.assertEqual(response.status, 401, kwargs)
            self.assertEqual(response.json()["error"], "invalid_client")
            self.assertEqual(response.header("www-authenticate"), 'Basic realm="appproxy"')

    @inlineCallbacks
    def test_no_client_auth(self) -> Generator[Deferred[Any], Any, None]:
        request = auth_request()
        code = yield self.code(request)
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": APP_CALLBACK,
            "code_verifier": request.verifier,
        }
        response = yield self.rp().post("/token", data)
        self.assertEqual((response.status, response.json()["error"]), (401, "invalid_client"))
        public = yield self.rp().post("/token", {**data, "client_id": "appproxy-connector"})
        self.assertEqual((public.status, public.json()["error"]), (400, "unauthorized_client"))

    @inlineCallbacks
    def test_parameters_in_query_refused(self) -> Generator[Deferred[Any], Any, None]:
        response = yield self.rp().post(
            f"/token?client_secret={WIKI_SECRET}",
            {"grant_type": "authorization_code", "client_id": "wiki"},
        )
        self.assertEqual((response.status, response.json()["error"]), (400, "invalid_request"))

    @inlineCallbacks
    def test_unsupported_grant(self) -> Generator[Deferred[Any], Any, None]:
        response = yield self.rp().post(
            "/token",
            {"grant_type": "password", "username": "alice", "password": "correct horse"},
            headers={"Authorization": _basic("wiki", WIKI_SECRET)},
        )
        self.assertEqual(
            (response.status, response.json()["error"]), (400, "unsupported_grant_type")
        )

    @inlineCallbacks
    def test_user_removed_before_exchange(self) -> Generator[Deferred[Any], Any, None]:
        request = auth_request()
        code = yield self.code(request)
        UserStore.load(self.users_path).without_user("alice").save(self.users_path)
        response = yield self.exchange(code, request)
        self.assertEqual((response.status, response.json()["error"]), (400, "invalid_grant"))


class AuthorizationRequestTests(ProviderTestCase):
    @inlineCallbacks
    def test_bad_client_or_redirect_never_redirects(self) -> Generator[Deferred[Any], Any, None]:
        cases: list[dict[str, Any]] = [
            {"redirect_uri": "https://evil.example/cb"},
            {"redirect_uri": APP_CALLBACK + "/"},
            {"redirect_uri": OTHER_CALLBACK},  # crm's, not wiki's
            {"redirect_uri": None},
            {"client_id": "nobody"},
            {"client_id": None},
            {"client_id": "appproxy-connector"},
            # Even with other errors too.
            {"redirect_uri": "https://evil.example/cb", "response_type": "token"},
        ]
        for overrides in cases:
            response = yield self.browser().get(auth_request(**overrides).path)
            self.assertEqual(response.status, 400, overrides)
            self.assertIsNone(response.header("location"))
            self.assertIn("text/html", response.header("content-type") or "")
            self.assertNotIn("evil.example", response.text)

    @inlineCallbacks
    def test_errors_redirect(self) -> Generator[Deferred[Any], Any, None]:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"response_type": "token"}, "unsupported_response_type"),
            ({"scope": "profile"}, "invalid_scope"),
            ({"code_challenge": None}, "invalid_request"),
            ({"code_challenge_method": "plain"}, "invalid_request"),
            ({"code_challenge_method": None}, "invalid_request"),
            ({"code_challenge": "short"}, "invalid_request"),
            ({"max_age": "-1"}, "invalid_request"),
            ({"prompt": "none login"}, "invalid_request"),
            ({"request": "eyJ"}, "request_not_supported"),
        ]
        for overrides, error in cases:
            request = auth_request(**overrides)
            response = yield self.browser().get(request.path)
            self.assertEqual(response.status, 302, overrides)
            location = response.header("location") or ""
            self.assertTrue(location.startswith(APP_CALLBACK + "?"), location)
            query = response.location_query()
            self.assertEqual(query["error"], error, overrides)
            self.assertEqual(query["state"], request.params["state"])
            self.assertEqual(query["iss"], self.issuer)

    @inlineCallbacks
    def test_repeated_parameter(self) -> Generator[Deferred[Any], Any, None]:
        request = auth_request()
        response = yield self.browser().get(request.path + "&scope=openid")
        self.assertEqual(response.location_query()["error"], "invalid_request")

    @inlineCallbacks
    def test_prompt_none_without_session(self) -> Generator[Deferred[Any], Any, None]:
        request = auth_request(prompt="none")
        response = yield self.browser().get(request.path)
        self.assertEqual(response.status, 302)
        self.assertEqual(response.location_query()["error"], "login_required")
        self.assertEqual(response.location_query()["state"], request.params["state"])


class SessionTests(ProviderTestCase):
    @inlineCallbacks
    def test_sso_reused(self) -> Generator[Deferred[Any], Any, None]:
        """A second app's sign-in does not ask again."""
        browser = self.browser()
        first = yield self.full_flow(browser)
        self.clock.advance(10)
        request = auth_request(client_id="crm", redirect_uri=OTHER_CALLBACK)
        response = yield browser.get(request.path)
        self.assertEqual(response.status, 302)
        query = response.location_query()
        self.assertEqual(query["state"], request.params["state"])
        tokens = yield self.exchange(
            query["code"], request, client="crm", secret=CRM_SECRET, method="post"
        )
        claims = yield self.id_token_claims(tokens.json()["id_token"], audience="crm")
        self.assertEqual(claims["sub"], "alice")
        self.assertEqual(claims["auth_time"], first["auth_time"])
        self.assertEqual(claims["iat"], first["iat"] + 10)
        self.assertEqual(claims["nonce"], request.params["nonce"])
        # prompt=none works with the session too.
        silent = yield browser.get(auth_request(prompt="none").path)
        self.assertIn("code", silent.location_query())
        self.assertEqual(len(self.attempts), 1)

    @inlineCallbacks
    def test_other_browser_asked(self) -> Generator[Deferred[Any], Any, None]:
        yield self.full_flow(self.browser())
        response = yield self.browser().get(auth_request().path)
        self.assertEqual(response.status, 200)
        self.assertIn("Sign in", response.text)

    @inlineCallbacks
    def test_prompt_login(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        yield self.full_flow(browser)
        self.clock.advance(5)
        request = auth_request(prompt="login")
        page = yield browser.get(request.path)
        self.assertEqual(page.status, 200)
        self.assertEqual(page.form().action, "/authorize")
        done = yield browser.submit(page.form(), username="alice", password="correct horse")
        tokens = yield self.exchange(done.location_query()["code"], request)
        claims = yield self.id_token_claims(tokens.json()["id_token"])
        self.assertEqual(claims["auth_time"], int(self.clock.seconds()))

    @inlineCallbacks
    def test_max_age(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        yield self.full_flow(browser)
        self.clock.advance(120)
        fresh = yield browser.get(auth_request(max_age="600").path)
        self.assertEqual(fresh.status, 302)
        stale = yield browser.get(auth_request(max_age="60").path)
        self.assertEqual(stale.status, 200)
        self.assertIn('name="password"', stale.text)
        silent = yield browser.get(auth_request(max_age="60", prompt="none").path)
        self.assertEqual(silent.location_query()["error"], "login_required")

    @inlineCallbacks
    def test_session_expires(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        yield self.full_flow(browser)
        self.clock.advance(8 * 3600 + 1)
        response = yield browser.get(auth_request().path)
        self.assertEqual(response.status, 200)

    @inlineCallbacks
    def test_password_change_ends_session(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        yield self.full_flow(browser)
        new_hash = hash_password("new password")
        update_user(
            self.users_path, "alice", lambda alice: attrs.evolve(alice, password_hash=new_hash)
        )
        response = yield browser.get(auth_request().path)
        self.assertEqual(response.status, 200)

    @inlineCallbacks
    def test_forged_form(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        page = yield browser.get(auth_request().path)
        form = page.form()
        forged = yield browser.submit(
            form, csrf="x" * 43, username="alice", password="correct horse"
        )
        self.assertEqual(forged.status, 400)
        # Another browser (no binding cookie) cannot post this browser's form.
        other = yield self.browser().submit(form, username="alice", password="correct horse")
        self.assertEqual(other.status, 400)
        unknown = yield browser.submit(
            form, login="nope", username="alice", password="correct horse"
        )
        self.assertEqual(unknown.status, 400)
        self.assertEqual(self.attempts, [])
        # The real form still works.
        done = yield browser.submit(form, username="alice", password="correct horse")
        assert_continues(done)
        # ... once.
        again = yield browser.submit(form, username="alice", password="correct horse")
        self.assertEqual(again.status, 400)

    @inlineCallbacks
    def test_form_expires(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        page = yield browser.get(auth_request().path)
        self.clock.advance(601)
        response = yield browser.submit(page.form(), username="alice", password="correct horse")
        self.assertEqual(response.status, 400)
        self.assertIn("expired", response.text)


class TotpTests(ProviderTestCase):
    @inlineCallbacks
    def test_two_steps(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        request = auth_request()
        step1 = yield self.sign_in(browser, request, "bob", "battery staple")
        self.assertEqual(step1.status, 200)
        self.assertNotIn("__Host-appproxy-idp", browser.cookies)
        form = step1.form()
        self.assertEqual(form.fields["step"], "otp")
        self.assertIn('autocomplete="one-time-code"', step1.text)
        self.assertEqual(step1.header("content-security-policy"), CSP)

        wrong = yield browser.submit(form, code="000000" if self.code() != "000000" else "111111")
        self.assertIn("Incorrect code", wrong.text)
        done = yield browser.submit(form, code=self.code())
        assert_continues(done)
        tokens = yield self.exchange(done.location_query()["code"], request)
        claims = yield self.id_token_claims(tokens.json()["id_token"])
        self.assertEqual(claims["amr"], ["pwd", "otp"])
        self.assertEqual(claims["acr"], ACR_MFA)
        self.assertEqual(claims["sub"], "bob")
        self.assertEqual(
            self.attempts,
            [
                ("bob", "127.0.0.1", True, "password"),
                ("bob", "127.0.0.1", False, "otp"),
                ("bob", "127.0.0.1", True, "otp"),
            ],
        )

    def code(self, offset: float = 0) -> str:
        return totp.totp(BOB_SECRET, self.clock.seconds() + offset)

    @inlineCallbacks
    def test_code_not_reused(self) -> Generator[Deferred[Any], Any, None]:
        """A code (a time step) serves one sign-in only."""
        code = self.code()
        for continues in [True, False]:
            browser = self.browser()
            step1 = yield self.sign_in(browser, auth_request(), "bob", "battery staple")
            done = yield browser.submit(step1.form(), code=code)
            self.assertEqual(done.status, 200)
            self.assertEqual(done.continue_url is not None, continues, done.text[:300])
        self.assertIn("Incorrect code", done.text)
        # The next step's code works.
        self.clock.advance(30)
        done = yield browser.submit(step1.form(), code=self.code())
        assert_continues(done)

    @inlineCallbacks
    def test_code_from_neighbouring_step(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        step1 = yield self.sign_in(browser, auth_request(), "bob", "battery staple")
        done = yield browser.submit(step1.form(), code=self.code(-30))
        assert_continues(done)

    @inlineCallbacks
    def test_otp_step_cannot_be_skipped(self) -> Generator[Deferred[Any], Any, None]:
        """Posting the password form again does not bypass the code."""
        browser = self.browser()
        page = yield browser.get(auth_request().path)
        form = page.form()
        yield browser.submit(form, username="bob", password="battery staple")
        again = yield browser.submit(form, username="alice", password="correct horse")
        self.assertEqual(again.status, 200)
        self.assertEqual(again.form().fields["step"], "otp")

    @inlineCallbacks
    def test_step_up(self) -> Generator[Deferred[Any], Any, None]:
        """
        An MFA request with a password-only session asks for the code only;
        without one the session is reused as it is.
        """
        browser = self.browser()
        yield self.full_flow(browser)
        secret = totp.generate_secret()
        update_user(self.users_path, "alice", lambda alice: attrs.evolve(alice, totp_secret=secret))

        plain = yield browser.get(auth_request().path)
        self.assertEqual(plain.status, 302)

        self.clock.advance(40)
        request = auth_request(acr_values="mfa")
        page = yield browser.get(request.path)
        self.assertEqual(page.status, 200)
        self.assertEqual(page.form().fields["step"], "otp")
        self.assertNotIn('name="password"', page.text)
        silent = yield browser.get(auth_request(acr_values="mfa", prompt="none").path)
        self.assertEqual(silent.location_query()["error"], "login_required")

        done = yield browser.submit(page.form(), code=totp.totp(secret, self.clock.seconds()))
        assert_continues(done)
        tokens = yield self.exchange(done.location_query()["code"], request)
        claims = yield self.id_token_claims(tokens.json()["id_token"])
        self.assertEqual(claims["amr"], ["pwd", "otp"])
        self.assertEqual(claims["acr"], ACR_MFA)
        # The session now has both: the next MFA request does not ask.
        next_request = auth_request(
            acr_values="http://schemas.openid.net/pape/policies/2007/06/multi-factor"
        )
        again = yield browser.get(next_request.path)
        self.assertEqual(again.status, 302)

    @inlineCallbacks
    def test_mfa_requested_user_without_totp(self) -> Generator[Deferred[Any], Any, None]:
        """No second factor to ask for: password only; the app decides."""
        claims = yield self.full_flow(self.browser(), acr_values="mfa")
        self.assertEqual(claims["amr"], ["pwd"])
        self.assertEqual(claims["acr"], ACR_PWD)


class DeviceFlowTests(ProviderTestCase):
    @inlineCallbacks
    def start(self, **data: str) -> Generator[Deferred[Any], Any, dict[str, Any]]:
        response = yield self.rp().post(
            "/device_authorization", {"client_id": "appproxy-connector", **data}
        )
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.header("cache-control"), "no-store")
        document: dict[str, Any] = response.json()
        return document

    def poll(self, device_code: str, client_id: str = "appproxy-connector") -> Deferred[Response]:
        return self.rp().post(
            "/token",
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "device_code": device_code,
                "client_id": client_id,
            },
        )

    @inlineCallbacks
    def enter_code(
        self, browser: Browser, user_code: str
    ) -> Generator[Deferred[Any], Any, Response]:
        page = yield browser.get("/device")
        self.assertEqual(page.status, 200)
        self.assertEqual(page.header("content-security-policy"), CSP)
        response = yield browser.submit(page.form(), user_code=user_code)
        return response

    @inlineCallbacks
    def test_device_flow(self) -> Generator[Deferred[Any], Any, None]:
        started = yield self.start(scope="openid profile")
        self.assertRegex(
            started["user_code"], r"\A[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}\Z"
        )
        self.assertEqual(started["verification_uri"], self.issuer + "/device")
        self.assertEqual(
            started["verification_uri_complete"],
            self.issuer + "/device?user_code=" + started["user_code"],
        )
        self.assertEqual((started["expires_in"], started["interval"]), (600, 5))

        pending = yield self.poll(started["device_code"])
        self.assertEqual((pending.status, pending.json()["error"]), (400, "authorization_pending"))
        too_fast = yield self.poll(started["device_code"])
        self.assertEqual(too_fast.json()["error"], "slow_down")
        self.clock.advance(10)  # the interval is 10 s now
        pending = yield self.poll(started["device_code"])
        self.assertEqual(pending.json()["error"], "authorization_pending")

        browser = self.browser()
        # Typed in lower case without the dash: still recognised.
        typed = started["user_code"].replace("-", "").lower()
        page = yield self.enter_code(browser, typed)
        self.assertEqual(page.status, 200)
        self.assertIn("appproxy-connector", page.text)
        self.assertIn(started["user_code"], page.text)
        approved = yield browser.submit(page.form(), username="alice", password="correct horse")
        self.assertEqual(approved.status, 200, approved.body)
        self.assertIn("Device approved", approved.text)

        self.clock.advance(10)
        tokens = yield self.poll(started["device_code"])
        self.assertEqual(tokens.status, 200, tokens.body)
        self.assertEqual(tokens.json()["token_type"], "Bearer")
        self.assertEqual(tokens.json()["scope"], "openid profile")
        claims = yield self.id_token_claims(
            tokens.json()["id_token"], audience="appproxy-connector"
        )
        self.assertEqual(claims["sub"], "alice")
        self.assertEqual(claims["amr"], ["pwd"])
        self.assertNotIn("nonce", claims)
        self.clock.advance(10)
        again = yield self.poll(started["device_code"])
        self.assertEqual(again.json()["error"], "invalid_grant")

    @inlineCallbacks
    def test_device_with_session_and_totp(self) -> Generator[Deferred[Any], Any, None]:
        """Signed in already: the user confirms; a TOTP user gives both steps otherwise."""
        started = yield self.start()
        browser = self.browser()
        page = yield self.enter_code(browser, started["user_code"])
        step1 = yield browser.submit(page.form(), username="bob", password="battery staple")
        self.assertEqual(step1.form().fields["step"], "otp")
        approved = yield browser.submit(
            step1.form(), code=totp.totp(BOB_SECRET, self.clock.seconds())
        )
        self.assertIn("Device approved", approved.text)
        tokens = yield self.poll(started["device_code"])
        claims = yield self.id_token_claims(
            tokens.json()["id_token"], audience="appproxy-connector"
        )
        self.assertEqual((claims["sub"], claims["amr"]), ("bob", ["pwd", "otp"]))

        # A second device: the signed-in browser only confirms.
        second = yield self.start()
        confirm = yield self.enter_code(browser, second["user_code"])
        self.assertIn("Approve device", confirm.text)
        self.assertIn(second["user_code"], confirm.text)
        approve, deny = confirm.forms()
        self.assertEqual((approve.fields["step"], deny.fields["step"]), ("approve", "deny"))
        done = yield browser.submit(approve)
        self.assertIn("Device approved", done.text)
        tokens = yield self.poll(second["device_code"])
        self.assertEqual(tokens.status, 200)

    @inlineCallbacks
    def test_device_denied(self) -> Generator[Deferred[Any], Any, None]:
        started = yield self.start()
        browser = self.browser()
        page = yield self.enter_code(browser, started["user_code"])
        deny = [form for form in page.forms() if form.fields.get("step") == "deny"]
        self.assertEqual(len(deny), 1)
        denied = yield browser.submit(deny[0])
        self.assertIn("Request denied", denied.text)
        response = yield self.poll(started["device_code"])
        self.assertEqual(response.json()["error"], "access_denied")

    @inlineCallbacks
    def test_device_code_expires(self) -> Generator[Deferred[Any], Any, None]:
        started = yield self.start()
        self.clock.advance(601)
        response = yield self.poll(started["device_code"])
        self.assertEqual(response.json()["error"], "expired_token")
        page = yield self.enter_code(self.browser(), started["user_code"])
        self.assertIn("not valid or has expired", page.text)

    @inlineCallbacks
    def test_wrong_user_code(self) -> Generator[Deferred[Any], Any, None]:
        page = yield self.enter_code(self.browser(), "BCDF-GHJK")
        self.assertIn("not valid or has expired", page.text)
        self.assertEqual(page.form().action, "/device")

    @inlineCallbacks
    def test_device_client_checks(self) -> Generator[Deferred[Any], Any, None]:
        started = yield self.start()
        other = yield self.rp().post(
            "/token",
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "device_code": started["device_code"],
            },
            headers={"Authorization": _basic("wiki", WIKI_SECRET)},
        )
        self.assertEqual(other.json()["error"], "invalid_grant")
        unknown = yield self.rp().post("/device_authorization", {"client_id": "nobody"})
        self.assertEqual((unknown.status, unknown.json()["error"]), (401, "invalid_client"))
        no_openid = yield self.rp().post(
            "/device_authorization", {"client_id": "appproxy-connector", "scope": "profile"}
        )
        self.assertEqual(no_openid.json()["error"], "invalid_scope")
        # A confidential client may use the device flow, authenticated.
        confidential = yield self.rp().post(
            "/device_authorization", {}, headers={"Authorization": _basic("wiki", WIKI_SECRET)}
        )
        self.assertEqual(confidential.status, 200)
        unauthenticated = yield self.rp().post("/device_authorization", {"client_id": "wiki"})
        self.assertEqual(unauthenticated.status, 401)


class UserinfoAndSignOutTests(ProviderTestCase):
    @inlineCallbacks
    def test_userinfo_refuses(self) -> Generator[Deferred[Any], Any, None]:
        missing = yield self.rp().get("/userinfo")
        self.assertEqual(missing.status, 401)
        self.assertEqual(missing.header("www-authenticate"), 'Bearer realm="appproxy"')
        wrong = yield self.rp().get("/userinfo", headers={"Authorization": "Bearer nope"})
        self.assertEqual(wrong.status, 401)
        self.assertIn('error="invalid_token"', wrong.header("www-authenticate") or "")

    @inlineCallbacks
    def test_userinfo_expires(self) -> Generator[Deferred[Any], Any, None]:
        request = auth_request()
        done = yield self.sign_in(self.browser(), request)
        tokens = yield self.exchange(done.location_query()["code"], request)
        headers = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
        self.clock.advance(301)
        info = yield self.rp().get("/userinfo", headers=headers)
        self.assertEqual(info.status, 401)

    @inlineCallbacks
    def id_token(self, browser: Browser) -> Generator[Deferred[Any], Any, str]:
        request = auth_request()
        done = yield self.sign_in(browser, request)
        tokens = yield self.exchange(done.location_query()["code"], request)
        token: str = tokens.json()["id_token"]
        return token

    @inlineCallbacks
    def test_end_session_redirects(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        id_token = yield self.id_token(browser)
        target = "https://wiki.appproxy.test/.appproxy/signed-out"
        response = yield browser.get(
            "/end-session?"
            + urllib.parse.urlencode(
                {"id_token_hint": id_token, "post_logout_redirect_uri": target, "state": "xyz"}
            )
        )
        self.assertEqual(response.status, 302)
        self.assertEqual(response.header("location"), target + "?state=xyz")
        self.assertNotIn("__Host-appproxy-idp", browser.cookies)
        cleared = [c for c in browser.set_cookie_headers if c.startswith("__Host-appproxy-idp=;")]
        self.assertEqual(len(cleared), 1)
        # Signed out: the next authorization asks again, even with the old cookie.
        page = yield browser.get(auth_request().path)
        self.assertEqual(page.status, 200)

    @inlineCallbacks
    def test_end_session_old_cookie_useless(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        yield self.id_token(browser)
        saved = dict(browser.cookies)
        yield browser.get("/end-session")
        browser.cookies = saved
        page = yield browser.get(auth_request().path)
        self.assertEqual(page.status, 200)

    @inlineCallbacks
    def test_end_session_unregistered_target(self) -> Generator[Deferred[Any], Any, None]:
        browser = self.browser()
        id_token = yield self.id_token(browser)
        for params in [
            {"id_token_hint": id_token, "post_logout_redirect_uri": "https://evil.example/"},
            # crm's origin, but the token is wiki's.
            {"id_token_hint": id_token, "post_logout_redirect_uri": OTHER_CALLBACK},
            {"id_token_hint": "not.a.token", "post_logout_redirect_uri": APP_CALLBACK},
            {"post_logout_redirect_uri": APP_CALLBACK},
            {"id_token_hint": id_token, "post_logout_redirect_uri": "http://wiki.appproxy.test/"},
        ]:
            response = yield browser.get("/end-session?" + urllib.parse.urlencode(params))
            self.assertEqual(response.status, 200, params)
            self.assertIsNone(response.header("location"))
            self.assertIn("You are signed out", response.text)

    @inlineCallbacks
    def test_end_session_with_client_id(self) -> Generator[Deferred[Any], Any, None]:
        response = yield self.browser().get(
            "/end-session?"
            + urllib.parse.urlencode(
                {"client_id": "crm", "post_logout_redirect_uri": "https://crm.appproxy.test/bye"}
            )
        )
        self.assertEqual(response.header("location"), "https://crm.appproxy.test/bye")


# ---------------------------------------------------------------------------
# units


class SettingsTests(SynchronousTestCase):
    def test_issuer(self) -> None:
        for issuer in [
            "http://login.example.com",
            "https://login.example.com/",
            "https://login.example.com/idp",
            "https://login.example.com?x",
        ]:
            self.assertRaises(ValueError, ProviderSettings, issuer=issuer, clients=())
        ProviderSettings(issuer="https://login.example.com:8443", clients=())

    def test_clients(self) -> None:
        ok = ClientRegistration(
            client_id="a", client_secret="s" * 16, redirect_uris=(APP_CALLBACK,)
        )
        self.assertRaises(
            ValueError, ProviderSettings, issuer="https://login.example.com", clients=(ok, ok)
        )
        cases: list[dict[str, Any]] = [
            {"client_id": "", "client_secret": "s" * 16},
            {"client_id": "a:b", "client_secret": "s" * 16},
            {"client_id": "a", "client_secret": "short"},
            {"client_id": "a", "client_secret": None, "redirect_uris": (APP_CALLBACK,)},
            {"client_id": "a", "client_secret": "s" * 16, "redirect_uris": ("http://x.test/cb",)},
            {"client_id": "a", "client_secret": "s" * 16, "redirect_uris": ("https://x/cb#f",)},
            {"client_id": "a", "client_secret": "s" * 16, "auth_methods": ("private_key_jwt",)},
        ]
        for kwargs in cases:
            self.assertRaises(ValueError, ClientRegistration, **kwargs)
        ClientRegistration(
            client_id="a", client_secret="s" * 16, redirect_uris=("http://127.0.0.1:8080/cb",)
        )

    def test_secret_not_in_repr(self) -> None:
        client = ClientRegistration(client_id="a", client_secret="very-secret-value")
        self.assertNotIn("very-secret-value", repr(client))


class SigningKeyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "idp-signing-key.pem"

    def test_created_once(self) -> None:
        key = load_or_create_signing_key(self.path)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.assertIn(b"BEGIN PRIVATE KEY", self.path.read_bytes())
        self.assertEqual([p.name for p in self.dir.iterdir()], [self.path.name])
        again = load_or_create_signing_key(self.path)
        self.assertEqual(again.kid, key.kid)
        self.assertEqual(again.public_jwk, key.public_jwk)

    def test_sign(self) -> None:
        key = load_or_create_signing_key(self.path)
        token = key.sign({"sub": "alice"})
        self.assertEqual(
            jwt.get_unverified_header(token), {"alg": "ES256", "kid": key.kid, "typ": "JWT"}
        )
        public = jwt.PyJWK(dict(key.public_jwk)).key
        self.assertEqual(jwt.decode(token, public, algorithms=["ES256"]), {"sub": "alice"})

    def test_refuses_readable(self) -> None:
        load_or_create_signing_key(self.path)
        os.chmod(self.path, 0o644)
        with self.assertRaises(ValueError) as caught:
            load_or_create_signing_key(self.path)
        self.assertIn("chmod 600", str(caught.exception))
        self.assertIn(str(self.path), str(caught.exception))

    def test_refuses_other_keys(self) -> None:
        key = ec.generate_private_key(ec.SECP384R1())
        self.path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        os.chmod(self.path, 0o600)
        self.assertRaises(ValueError, load_or_create_signing_key, self.path)
        self.path.write_bytes(b"not a key")
        self.assertRaises(ValueError, load_or_create_signing_key, self.path)

    def test_provider_refuses_bad_users_file(self) -> None:
        users = self.dir / "users.json"
        users.write_text("{}")
        os.chmod(users, 0o644)
        settings = ProviderSettings(issuer="https://login.example.com", clients=())
        with self.assertRaises(ValueError) as caught:
            IdentityProvider(settings, users, self.path, Clock(), cast(IReactorThreads, reactor))
        self.assertIn("chmod 600", str(caught.exception))


class ExpiringMapTests(SynchronousTestCase):
    def test_expiry(self) -> None:
        store: ExpiringMap[str, int] = ExpiringMap(lifetime=10, capacity=100)
        self.assertEqual(store.put("a", 1, now=0), 10)
        self.assertEqual(store.get("a", now=9.9), 1)
        self.assertIsNone(store.get("a", now=10))
        self.assertEqual(len(store), 0)

    def test_pop_is_single_use(self) -> None:
        store: ExpiringMap[str, int] = ExpiringMap(lifetime=10, capacity=100)
        store.put("a", 1, now=0)
        self.assertEqual(store.pop("a", now=1), 1)
        self.assertIsNone(store.pop("a", now=1))
        store.put("b", 2, now=0)
        self.assertIsNone(store.pop("b", now=11))

    def test_update_keeps_expiry(self) -> None:
        store: ExpiringMap[str, int] = ExpiringMap(lifetime=10, capacity=100)
        store.put("a", 1, now=0)
        self.assertTrue(store.update("a", 2, now=5))
        self.assertEqual(store.get("a", now=9), 2)
        self.assertFalse(store.update("a", 3, now=10))
        self.assertFalse(store.update("b", 3, now=0))

    @given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 5)), max_size=60))
    def test_bounded(self, puts: list[tuple[int, int]]) -> None:
        """Never more than capacity entries; expired ones go as new ones come."""
        store: ExpiringMap[int, int] = ExpiringMap(lifetime=10, capacity=8)
        now = 0
        for key, step in puts:
            now += step
            store.put(key, now, now)
            self.assertLessEqual(len(store), 8)
            self.assertEqual(store.get(key, now), now)
            for other in range(21):
                value = store.get(other, now)
                if value is not None:
                    self.assertGreater(value + 10, now)


class FailureCounterTests(SynchronousTestCase):
    def test_lock_for_the_window(self) -> None:
        counter = FailureCounter(limit=3, window=100)
        for t in (0, 10, 20):
            self.assertFalse(counter.is_locked("alice", t))
            counter.record("alice", t)
        self.assertTrue(counter.is_locked("alice", 21))
        self.assertTrue(counter.is_locked("alice", 99))
        self.assertFalse(counter.is_locked("bob", 21))
        self.assertFalse(counter.is_locked("alice", 100))
        self.assertEqual(counter.failures("alice", 100), 0)

    def test_forgive_and_clear(self) -> None:
        counter = FailureCounter(limit=2, window=100)
        counter.record("a", 0)
        counter.record("a", 0)
        self.assertTrue(counter.is_locked("a", 1))
        counter.forgive("a", 1)
        self.assertFalse(counter.is_locked("a", 1))
        counter.record("a", 1)
        counter.clear("a")
        self.assertEqual(counter.failures("a", 1), 0)

    @given(st.lists(st.sampled_from("abcdefgh"), max_size=100))
    def test_capacity(self, keys: list[str]) -> None:
        counter = FailureCounter(limit=2, window=100, capacity=4)
        for key in keys:
            counter.record(key, 0)
        self.assertLessEqual(sum(counter.failures(k, 0) > 0 for k in "abcdefgh"), 4)


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        named = dict(attributes)
        if tag == "input" and named.get("name"):
            self.values[named["name"] or ""] = named.get("value") or ""

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: bytes) -> _Collect:
    parser = _Collect()
    parser.feed(page.decode("utf-8"))
    parser.close()
    return parser


_any_text = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=40)


class PageTests(SynchronousTestCase):
    @given(_any_text, _any_text, _any_text, _any_text)
    def test_sign_in_page_escapes(self, client: str, username: str, error: str, code: str) -> None:
        """Whatever the values, the page has the same elements and shows them verbatim."""
        plain = _parse(
            pages.sign_in_page(
                action="/authorize", login_id="l", csrf="c", client="x", username="u", error="e"
            )
        )
        page = _parse(
            pages.sign_in_page(
                action="/authorize",
                login_id=code,
                csrf=code,
                client=client,
                username=username,
                error=error,
            )
        )
        self.assertEqual(page.tags, plain.tags)
        self.assertEqual(page.values["username"], username)
        self.assertEqual(page.values["login"], code)
        self.assertIn(client, "".join(page.text))
        self.assertIn(error, "".join(page.text))

    @given(_any_text, _any_text)
    def test_message_page_escapes(self, title: str, message: str) -> None:
        plain = _parse(pages.message_page("t", "m"))
        page = _parse(pages.message_page(title, message))
        self.assertEqual(page.tags, plain.tags)
        self.assertIn(message, "".join(page.text))

    @given(_any_text, _any_text, _any_text)
    def test_device_pages_escape(self, user: str, client: str, code: str) -> None:
        plain = _parse(
            pages.device_confirm_page(
                action="/device", login_id="l", csrf="c", user="u", client="c", user_code="x"
            )
        )
        page = _parse(
            pages.device_confirm_page(
                action="/device", login_id="l", csrf="c", user=user, client=client, user_code=code
            )
        )
        self.assertEqual(page.tags, plain.tags)
        text = "".join(page.text)
        for value in (user, client, code):
            self.assertIn(value, text)
        entry = _parse(pages.device_code_page(action="/device", user_code=code, error=user))
        self.assertEqual(entry.values["user_code"], code)
