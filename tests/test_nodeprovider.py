"""
Tests for L{tests.nodeprovider}: the launcher starts a real oidc-provider, and
a minimal scripted browser signs in against it (authorization code flow with
PKCE and nonce, both client authentication methods, the MFA step, RP-initiated
logout and a signing key rotation), checking the ID tokens with PyJWT.

No appproxy service takes part: this proves the provider the interoperability
tests rely on behaves as they expect.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import jwt
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.ssl import Certificate
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from tests.nodeprovider import (
    DEVICE_CODE_GRANT,
    NODE_DIR,
    NodeProviderError,
    device_client,
    node_available,
    start_node_provider,
)

REDIRECT_URI = "https://app.example.test/.appproxy/callback"
POST_LOGOUT_URI = "https://app.example.test/signed-out"
# Every HTTP exchange is bounded: the provider is on loopback and answers at once.
HTTP_TIMEOUT = 10.0

USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "password": "alice-password",
        "otp": "123456",
        "preferred_username": "alice",
        "name": "Alice Example",
        "email": "alice@example.test",
        "groups": ["staff", "wiki-admins"],
        "roles": ["editor"],
        "employee_id": "E-1001",
    },
    "bob": {
        "password": "bob-password",
        "preferred_username": "bob",
        "name": "Bob Example",
        "email": "bob@example.test",
        "groups": ["staff"],
        "roles": [],
    },
}

BASIC_CLIENT = {
    "client_id": "basic-app",
    "client_secret": "basic-app-secret-0123456789abcdef",
    "redirect_uris": [REDIRECT_URI],
    "post_logout_redirect_uris": [POST_LOGOUT_URI],
    "token_endpoint_auth_method": "client_secret_basic",
    "id_token_signed_response_alg": "RS256",
}

DEVICE_CLIENT = device_client("appproxy-connector")

POST_CLIENT = {
    "client_id": "post-app",
    "client_secret": "post-app-secret-0123456789abcdef",
    "redirect_uris": [REDIRECT_URI],
    "token_endpoint_auth_method": "client_secret_post",
    "id_token_signed_response_alg": "ES256",
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Browser:
    """
    Just enough of a browser: a cookie jar, TLS trusting only the provider's
    CA, redirects followed by hand (so the one to the relying party's
    redirect URI is read, not followed), and plain HTML forms.
    """

    def __init__(self, ca_pem: bytes) -> None:
        policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(ca_pem))
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(
            Agent(reactor, contextFactory=policy, pool=pool), IndexableCookieJar()
        )

    @inlineCallbacks
    def get_json(self, url: str) -> Any:
        response = yield self.http.get(url, timeout=HTTP_TIMEOUT)
        body = yield response.content()
        if response.code != 200:
            raise AssertionError(f"GET {url}: {response.code} {body!r}")
        return json.loads(body)

    @inlineCallbacks
    def navigate(self, method: str, url: str, *, stop_at: str, **kwargs: Any) -> Any:
        """
        Request C{url} and follow redirects until a page (returned as
        C{("page", url, html)}) or a redirect to C{stop_at} (returned as
        C{("redirect", location, None)}).
        """
        for _ in range(10):
            response = yield self.http.request(
                method, url, allow_redirects=False, timeout=HTTP_TIMEOUT, **kwargs
            )
            body = yield response.content()
            if response.code in (302, 303):
                (location,) = response.headers.getRawHeaders("location")
                location = urljoin(url, location)
                if location.startswith(stop_at):
                    return ("redirect", location, None)
                method, url, kwargs = "GET", location, {}
                continue
            if response.code != 200:
                raise AssertionError(f"{method} {url}: {response.code} {body!r}")
            return ("page", url, body.decode("utf-8"))
        raise AssertionError(f"too many redirects, last at {url}")

    def submit(self, page_url: str, html: str, fields: Mapping[str, str], stop_at: str) -> Any:
        """Fill the page's only form and post it."""
        (form,) = re.findall(r"<form\b[^>]*>.*?</form>", html, re.S)
        action = re.search(r'action="([^"]*)"', form)
        assert action is not None
        data = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))
        names = set(re.findall(r'<input\b[^>]*name="([^"]+)"', form))
        missing = set(fields) - names
        if missing:
            raise AssertionError(f"the form has no {sorted(missing)} field: {form}")
        data.update(fields)
        return self.navigate("POST", urljoin(page_url, action.group(1)), stop_at=stop_at, data=data)


class SignIn:
    """One authorization request: its state, nonce and PKCE verifier."""

    def __init__(self, discovery: Mapping[str, Any], client: Mapping[str, Any]) -> None:
        self.discovery = discovery
        self.client = client
        self.state = secrets.token_urlsafe(16)
        self.nonce = secrets.token_urlsafe(16)
        self.verifier = secrets.token_urlsafe(48)

    def url(self, **extra: str) -> str:
        challenge = _b64url(hashlib.sha256(self.verifier.encode("ascii")).digest())
        params = {
            "response_type": "code",
            "client_id": self.client["client_id"],
            "redirect_uri": REDIRECT_URI,
            "scope": "openid profile email",
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **extra,
        }
        return f"{self.discovery['authorization_endpoint']}?{urlencode(params)}"

    def code_from(self, location: str) -> str:
        query = parse_qs(urlsplit(location).query)
        if "error" in query:
            raise AssertionError(f"the provider answered with an error: {query}")
        if query["state"] != [self.state]:
            raise AssertionError(f"state mismatch: {query}")
        if query["iss"] != [self.discovery["issuer"]]:
            raise AssertionError(f"iss mismatch: {query}")
        (code,) = query["code"]
        return code


class NodeProviderTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        problem = node_available()
        if problem is not None:
            self.fail(problem)

    @inlineCallbacks
    def start(self, **kwargs: Any) -> Any:
        state = Path(self.mktemp())
        state.mkdir()
        kwargs.setdefault("users", USERS)
        kwargs.setdefault("clients", [BASIC_CLIENT, POST_CLIENT])
        provider = yield start_node_provider(reactor=reactor, state=state, **kwargs)
        self.addCleanup(provider.stop)
        browser = Browser(provider.ca_pem)
        discovery = yield browser.get_json(provider.discovery_url)
        return provider, browser, discovery

    @inlineCallbacks
    def sign_in(
        self,
        browser: Browser,
        discovery: Mapping[str, Any],
        client: Mapping[str, Any],
        user: str,
        *,
        otp: str | None = None,
        **extra: str,
    ) -> Any:
        """Sign C{user} in and return the L{SignIn} and the authorization code."""
        sign_in = SignIn(discovery, client)
        kind, url, html = yield browser.navigate("GET", sign_in.url(**extra), stop_at=REDIRECT_URI)
        self.assertEqual(kind, "page")
        self.assertIn('name="login"', html)
        kind, url, html = yield browser.submit(
            url, html, {"login": user, "password": USERS[user]["password"]}, REDIRECT_URI
        )
        if otp is not None:
            self.assertEqual(kind, "page")
            self.assertIn('name="otp"', html)
            kind, url, html = yield browser.submit(url, html, {"otp": otp}, REDIRECT_URI)
        self.assertEqual(kind, "redirect", html)
        return sign_in, sign_in.code_from(url)

    @inlineCallbacks
    def exchange(self, browser: Browser, sign_in: SignIn, code: str) -> Any:
        """Redeem C{code} at the token endpoint, authenticating as the client does."""
        client = sign_in.client
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": sign_in.verifier,
        }
        auth = None
        if client["token_endpoint_auth_method"] == "client_secret_post":
            data.update(client_id=client["client_id"], client_secret=client["client_secret"])
        else:
            auth = (client["client_id"], client["client_secret"])
        response = yield browser.http.post(
            sign_in.discovery["token_endpoint"], data=data, auth=auth, timeout=HTTP_TIMEOUT
        )
        body = json.loads((yield response.content()))
        self.assertEqual(response.code, 200, body)
        self.assertNotIn("refresh_token", body)
        return body

    def verify(self, id_token: str, jwks: Mapping[str, Any], sign_in: SignIn) -> dict[str, Any]:
        """Verify an ID token as a relying party does: signature, iss, aud, exp, nonce."""
        header = jwt.get_unverified_header(id_token)
        keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(dict(jwks)).keys}
        if header["kid"] not in keys:
            raise jwt.InvalidKeyError(f"no key {header['kid']!r} in the JWKS")
        client = sign_in.client
        claims: dict[str, Any] = jwt.decode(
            id_token,
            key=keys[header["kid"]],
            algorithms=[client["id_token_signed_response_alg"]],
            audience=client["client_id"],
            issuer=sign_in.discovery["issuer"],
            options={"require": ["exp", "iat", "sub", "nonce"]},
        )
        self.assertEqual(claims["nonce"], sign_in.nonce)
        return claims

    @inlineCallbacks
    def test_code_flow_client_secret_basic(self) -> Any:
        """
        The provider serves its discovery document on the issuer over TLS
        trusting only the launcher's CA, with PKCE (S256 only), RP-initiated
        logout and the algorithms of its keys; its JWKS holds the public
        halves of the launcher's keys only.

        A wrong password shows the form again with an error; the right one
        ends at the redirect URI with a code (no consent screen) that the
        client redeems with HTTP Basic authentication for an RS256 ID token
        carrying the user's claims (groups, roles, any other claim, never the
        password or code), amr and acr; the code is
        single-use.
        """
        provider, browser, discovery = yield self.start()
        self.assertEqual(discovery["issuer"], provider.issuer)
        self.assertEqual(provider.issuer, f"https://localhost:{provider.port}")
        self.assertEqual(discovery["code_challenge_methods_supported"], ["S256"])
        self.assertEqual(discovery["end_session_endpoint"], f"{provider.issuer}/session/end")
        self.assertEqual(discovery["response_types_supported"], ["code"])
        self.assertEqual(
            set(discovery["id_token_signing_alg_values_supported"]), {"RS256", "ES256"}
        )
        self.assertTrue({"groups", "roles", "amr", "acr"} <= set(discovery["claims_supported"]))
        self.assertEqual(set(discovery["acr_values_supported"]), {"pwd", "mfa"})
        jwks = yield browser.get_json(discovery["jwks_uri"])
        self.assertEqual(jwks, provider.jwks_public)
        self.assertEqual(len(provider.kids), 2)
        for key in jwks["keys"]:
            self.assertFalse({"d", "p", "q"} & set(key))

        sign_in = SignIn(discovery, BASIC_CLIENT)
        kind, url, html = yield browser.navigate("GET", sign_in.url(), stop_at=REDIRECT_URI)
        self.assertEqual(kind, "page")
        kind, url, html = yield browser.submit(
            url, html, {"login": "alice", "password": "wrong"}, REDIRECT_URI
        )
        self.assertEqual(kind, "page")
        self.assertIn("Invalid login or password.", html)
        kind, location, _ = yield browser.submit(
            url, html, {"login": "alice", "password": "alice-password"}, REDIRECT_URI
        )
        self.assertEqual(kind, "redirect")
        code = sign_in.code_from(location)

        tokens = yield self.exchange(browser, sign_in, code)
        header = jwt.get_unverified_header(tokens["id_token"])
        self.assertEqual(header["alg"], "RS256")
        self.assertEqual(header["kid"], provider.kids[0])
        claims = self.verify(tokens["id_token"], jwks, sign_in)
        self.assertEqual(claims["sub"], "alice")
        self.assertEqual(claims["preferred_username"], "alice")
        self.assertEqual(claims["name"], "Alice Example")
        self.assertEqual(claims["email"], "alice@example.test")
        self.assertEqual(claims["groups"], ["staff", "wiki-admins"])
        self.assertEqual(claims["roles"], ["editor"])
        self.assertEqual(claims["employee_id"], "E-1001")
        self.assertEqual(claims["amr"], ["pwd"])
        self.assertEqual(claims["acr"], "pwd")
        self.assertIn("auth_time", claims)
        self.assertNotIn("password", claims)
        self.assertNotIn("otp", claims)

        response = yield browser.http.post(
            discovery["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "code_verifier": sign_in.verifier,
            },
            auth=(BASIC_CLIENT["client_id"], BASIC_CLIENT["client_secret"]),
            timeout=HTTP_TIMEOUT,
        )
        self.assertEqual(response.code, 400)
        self.assertEqual(json.loads((yield response.content()))["error"], "invalid_grant")

    @inlineCallbacks
    def test_code_flow_client_secret_post(self) -> Any:
        """
        A client using client_secret_post with a wrong secret in the form is
        refused; with the right one it gets an ES256 ID token signed with the
        ES256 key. (oidc-provider accepts either of the two client secret
        methods from a client registered for one of them.) The login form
        also takes the preferred_username.
        """
        provider, browser, discovery = yield self.start()
        sign_in, code = yield self.sign_in(browser, discovery, POST_CLIENT, "bob")

        response = yield browser.http.post(
            discovery["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "code_verifier": sign_in.verifier,
                "client_id": POST_CLIENT["client_id"],
                "client_secret": "wrong-secret",
            },
            timeout=HTTP_TIMEOUT,
        )
        body = json.loads((yield response.content()))
        self.assertEqual((response.code, body["error"]), (401, "invalid_client"), body)

        tokens = yield self.exchange(browser, sign_in, code)
        header = jwt.get_unverified_header(tokens["id_token"])
        self.assertEqual(header["alg"], "ES256")
        self.assertEqual(header["kid"], provider.kids[1])
        jwks = yield browser.get_json(discovery["jwks_uri"])
        claims = self.verify(tokens["id_token"], jwks, sign_in)
        self.assertEqual(claims["sub"], "bob")
        self.assertEqual(claims["groups"], ["staff"])
        self.assertEqual(claims["roles"], [])
        self.assertEqual(claims["amr"], ["pwd"])

    @inlineCallbacks
    def test_pkce_required(self) -> Any:
        """
        An authorization request without a code challenge is refused, and a
        code redeemed with the wrong verifier is refused.
        """
        _, browser, discovery = yield self.start()
        params = {
            "response_type": "code",
            "client_id": BASIC_CLIENT["client_id"],
            "redirect_uri": REDIRECT_URI,
            "scope": "openid",
            "state": "s",
            "nonce": "n",
        }
        kind, location, _ = yield browser.navigate(
            "GET",
            f"{discovery['authorization_endpoint']}?{urlencode(params)}",
            stop_at=REDIRECT_URI,
        )
        self.assertEqual(kind, "redirect")
        query = parse_qs(urlsplit(location).query)
        self.assertEqual(query["error"], ["invalid_request"])
        self.assertIn("PKCE", query["error_description"][0])

        sign_in, code = yield self.sign_in(browser, discovery, BASIC_CLIENT, "bob")
        sign_in.verifier = secrets.token_urlsafe(48)
        response = yield browser.http.post(
            discovery["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "code_verifier": sign_in.verifier,
            },
            auth=(BASIC_CLIENT["client_id"], BASIC_CLIENT["client_secret"]),
            timeout=HTTP_TIMEOUT,
        )
        self.assertEqual(response.code, 400)
        self.assertEqual(json.loads((yield response.content()))["error"], "invalid_grant")

    @inlineCallbacks
    def test_mfa(self) -> Any:
        """
        With acr_values=mfa a user who has a one-time code is asked for it
        after the password (a wrong code shows the form again) and the ID
        token says amr ["pwd", "otp"] and acr "mfa"; a provider session made
        with the password only is not enough (step-up). A user without a
        one-time code signs in with the password only.
        """
        provider, browser, discovery = yield self.start()
        # First a password-only sign-in: the provider session has acr "pwd".
        sign_in, code = yield self.sign_in(browser, discovery, BASIC_CLIENT, "alice")
        tokens = yield self.exchange(browser, sign_in, code)
        jwks = yield browser.get_json(discovery["jwks_uri"])
        self.assertEqual(self.verify(tokens["id_token"], jwks, sign_in)["acr"], "pwd")

        # Step-up: the same browser asks for MFA and must sign in again.
        sign_in = SignIn(discovery, BASIC_CLIENT)
        kind, url, html = yield browser.navigate(
            "GET", sign_in.url(acr_values="mfa"), stop_at=REDIRECT_URI
        )
        self.assertEqual(kind, "page")
        kind, url, html = yield browser.submit(
            url, html, {"login": "alice", "password": "alice-password"}, REDIRECT_URI
        )
        self.assertEqual(kind, "page")
        kind, url, html = yield browser.submit(url, html, {"otp": "000000"}, REDIRECT_URI)
        self.assertEqual(kind, "page")
        self.assertIn("Invalid code.", html)
        kind, location, _ = yield browser.submit(url, html, {"otp": "123456"}, REDIRECT_URI)
        self.assertEqual(kind, "redirect")
        tokens = yield self.exchange(browser, sign_in, sign_in.code_from(location))
        claims = self.verify(tokens["id_token"], jwks, sign_in)
        self.assertEqual(claims["amr"], ["pwd", "otp"])
        self.assertEqual(claims["acr"], "mfa")
        self.assertEqual(claims["groups"], ["staff", "wiki-admins"])

        # A user without a one-time code signs in with the password only,
        # and the ID token says so.
        other = Browser(provider.ca_pem)
        sign_in, code = yield self.sign_in(other, discovery, BASIC_CLIENT, "bob", acr_values="mfa")
        tokens = yield self.exchange(other, sign_in, code)
        claims = self.verify(tokens["id_token"], jwks, sign_in)
        self.assertEqual(claims["amr"], ["pwd"])
        self.assertEqual(claims["acr"], "pwd")

    @inlineCallbacks
    def test_rp_initiated_logout(self) -> Any:
        """
        The end-session endpoint shows a plain form; posting it ends the
        provider session and redirects to the registered post-logout URI with
        the state; the next authorization request asks for the password again.
        """
        _, browser, discovery = yield self.start()
        sign_in, code = yield self.sign_in(browser, discovery, BASIC_CLIENT, "alice")
        tokens = yield self.exchange(browser, sign_in, code)

        # While the provider session lasts, no form is shown.
        again = SignIn(discovery, BASIC_CLIENT)
        kind, location, _ = yield browser.navigate("GET", again.url(), stop_at=REDIRECT_URI)
        self.assertEqual(kind, "redirect")
        again.code_from(location)

        params = {
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": POST_LOGOUT_URI,
            "state": "bye",
        }
        kind, url, html = yield browser.navigate(
            "GET",
            f"{discovery['end_session_endpoint']}?{urlencode(params)}",
            stop_at=POST_LOGOUT_URI,
        )
        self.assertEqual(kind, "page")
        kind, location, _ = yield browser.submit(url, html, {}, POST_LOGOUT_URI)
        self.assertEqual(kind, "redirect")
        self.assertEqual(parse_qs(urlsplit(location).query), {"state": ["bye"]})

        kind, url, html = yield browser.navigate(
            "GET", SignIn(discovery, BASIC_CLIENT).url(), stop_at=REDIRECT_URI
        )
        self.assertEqual(kind, "page")
        self.assertIn('name="password"', html)

    @inlineCallbacks
    def test_rotate_keys_and_stop(self) -> Any:
        """
        rotate_keys restarts the provider on the same port with new keys: the
        JWKS publishes only the new key ids, a new ID token verifies with the
        new JWKS and not with the old one, and an old one not with the new.

        stop ends the process cleanly (SIGTERM, exit 0); the port then refuses
        connections and a second stop does nothing.
        """
        provider, browser, discovery = yield self.start(
            signing_alg="ES256", clients=[{**BASIC_CLIENT, "id_token_signed_response_alg": "ES256"}]
        )
        sign_in, code = yield self.sign_in(browser, discovery, provider.clients[0], "alice")
        old_tokens = yield self.exchange(browser, sign_in, code)
        old_jwks = yield browser.get_json(discovery["jwks_uri"])
        self.verify(old_tokens["id_token"], old_jwks, sign_in)
        old_kids = provider.kids
        port = provider.port

        yield provider.rotate_keys()
        self.assertEqual(provider.port, port)
        self.assertEqual(len(provider.kids), 1)
        self.assertNotEqual(provider.kids, old_kids)

        browser = Browser(provider.ca_pem)
        new_jwks = yield browser.get_json(discovery["jwks_uri"])
        self.assertEqual([key["kid"] for key in new_jwks["keys"]], provider.kids)
        sign_in, code = yield self.sign_in(browser, discovery, provider.clients[0], "alice")
        new_tokens = yield self.exchange(browser, sign_in, code)
        self.assertEqual(jwt.get_unverified_header(new_tokens["id_token"])["kid"], provider.kids[0])
        self.verify(new_tokens["id_token"], new_jwks, sign_in)
        self.assertRaises(
            jwt.InvalidKeyError, self.verify, new_tokens["id_token"], old_jwks, sign_in
        )
        self.assertRaises(
            jwt.InvalidKeyError, self.verify, old_tokens["id_token"], new_jwks, sign_in
        )
        # Even with the old kid, the old key does not verify the new token.
        forged_jwks = {"keys": [{**old_jwks["keys"][0], "kid": provider.kids[0]}]}
        self.assertRaises(
            jwt.InvalidSignatureError, self.verify, new_tokens["id_token"], forged_jwks, sign_in
        )

        yield provider.stop()
        yield provider.stop()
        with self.assertRaises(ConnectionRefusedError):
            yield Browser(provider.ca_pem).http.get(provider.discovery_url, timeout=HTTP_TIMEOUT)

    @inlineCallbacks
    def poll_device_token(self, browser: Browser, discovery: Any, device_code: str) -> Any:
        """One device flow token request of the public device client: status, JSON body."""
        response = yield browser.http.post(
            discovery["token_endpoint"],
            data={
                "grant_type": DEVICE_CODE_GRANT,
                "device_code": device_code,
                "client_id": DEVICE_CLIENT["client_id"],
            },
            timeout=HTTP_TIMEOUT,
        )
        body = json.loads((yield response.content()))
        return response.code, body

    @inlineCallbacks
    def test_device_flow(self) -> Any:
        """
        The device authorization grant (RFC 8628) for a public client: the
        device authorization endpoint (in discovery) gives a device code, a
        user code, the verification URI and the configured polling interval;
        the token endpoint says authorization_pending until the user enters
        the code, approves the device and signs in, then gives an ID token
        for the client carrying the roles claim (an administrator's role, as
        the service checks it); the device code is single-use. A client not
        registered for the grant is refused, and a cancelled approval ends
        in access_denied.
        """
        admin = {
            "password": "carol-password",
            "preferred_username": "carol",
            "roles": ["editor", "Application Administrator"],
        }
        provider, browser, discovery = yield self.start(
            users={**USERS, "carol": admin},
            clients=[BASIC_CLIENT, DEVICE_CLIENT],
            device_interval=1,
        )
        endpoint = discovery["device_authorization_endpoint"]
        self.assertEqual(endpoint, f"{provider.issuer}/device/auth")
        self.assertIn(DEVICE_CODE_GRANT, discovery["grant_types_supported"])

        response = yield browser.http.post(
            endpoint,
            data={"client_id": BASIC_CLIENT["client_id"], "scope": "openid"},
            auth=(BASIC_CLIENT["client_id"], BASIC_CLIENT["client_secret"]),
            timeout=HTTP_TIMEOUT,
        )
        body = json.loads((yield response.content()))
        self.assertEqual(response.code, 400, body)
        self.assertIn("device_code is not allowed for this client", body["error_description"])

        response = yield browser.http.post(
            endpoint,
            data={"client_id": DEVICE_CLIENT["client_id"], "scope": "openid profile"},
            timeout=HTTP_TIMEOUT,
        )
        started = json.loads((yield response.content()))
        self.assertEqual(response.code, 200, started)
        self.assertEqual(started["interval"], 1)
        self.assertEqual(started["verification_uri"], f"{provider.issuer}/device")
        letters = "[BCDFGHJKLMNPQRSTVWXZ]{4}"  # base-20: no vowels
        self.assertRegex(started["user_code"], f"^{letters}-{letters}$")
        code, body = yield self.poll_device_token(browser, discovery, started["device_code"])
        self.assertEqual((code, body["error"]), (400, "authorization_pending"))

        never = "https://nowhere.invalid/"
        kind, url, html = yield browser.navigate("GET", started["verification_uri"], stop_at=never)
        self.assertIn("Enter the code shown on your device.", html)
        self.assertNotIn("googleapis", html)
        kind, url, html = yield browser.submit(url, html, {"user_code": "BCDF-GHJK"}, never)
        self.assertIn("The code you entered is incorrect", html)
        kind, url, html = yield browser.submit(
            url, html, {"user_code": started["user_code"]}, never
        )
        self.assertIn("appproxy connector registration", html)
        self.assertIn(started["user_code"], html)
        kind, url, html = yield browser.submit(url, html, {}, never)
        self.assertIn('name="login"', html)
        kind, url, html = yield browser.submit(
            url, html, {"login": "carol", "password": "carol-password"}, never
        )
        self.assertEqual(kind, "page")
        self.assertIn("Device approved", html)

        code, tokens = yield self.poll_device_token(browser, discovery, started["device_code"])
        self.assertEqual(code, 200, tokens)
        jwks = yield browser.get_json(discovery["jwks_uri"])
        keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(jwks).keys}
        claims = jwt.decode(
            tokens["id_token"],
            key=keys[jwt.get_unverified_header(tokens["id_token"])["kid"]],
            algorithms=["RS256"],
            audience=DEVICE_CLIENT["client_id"],
            issuer=provider.issuer,
            options={"require": ["exp", "iat", "sub"]},
        )
        self.assertEqual(claims["sub"], "carol")
        self.assertEqual(claims["roles"], ["editor", "Application Administrator"])
        self.assertEqual(claims["preferred_username"], "carol")
        self.assertNotIn("nonce", claims)
        code, body = yield self.poll_device_token(browser, discovery, started["device_code"])
        self.assertEqual((code, body["error"]), (400, "invalid_grant"))

        # The user cancels instead of approving: the device gets access_denied.
        response = yield browser.http.post(
            endpoint,
            data={"client_id": DEVICE_CLIENT["client_id"], "scope": "openid profile"},
            timeout=HTTP_TIMEOUT,
        )
        started = json.loads((yield response.content()))
        kind, url, html = yield browser.navigate(
            "GET", started["verification_uri_complete"], stop_at=never
        )
        # The complete URI's page posts itself with a script; post it as it is.
        kind, url, html = yield browser.submit(url, html, {}, never)
        self.assertIn('id="abort"', html)
        # The Cancel button: the form's fields and abort=yes.
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))
        kind, url, html = yield browser.navigate(
            "POST", f"{provider.issuer}/device", stop_at=never, data={**fields, "abort": "yes"}
        )
        self.assertIn("The sign-in was cancelled.", html)
        code, body = yield self.poll_device_token(browser, discovery, started["device_code"])
        self.assertEqual((code, body["error"]), (400, "access_denied"))

    @inlineCallbacks
    def test_bad_configuration(self) -> Any:
        """
        provider.mjs exits non-zero with a message on stderr when its
        configuration is bad, and the launcher reports such a failure with
        that message.
        """
        config = Path(self.mktemp())
        config.write_text(json.dumps({"port": 70000}))
        out, err, code = yield getProcessOutputAndValue(
            shutil.which("node") or "node",
            [str(NODE_DIR / "provider.mjs"), str(config)],
            env=None,
            reactor=reactor,
        )
        self.assertEqual(code, 2)
        self.assertIn(b'"port" must be an integer from 1 to 65535', err)
        self.assertNotIn(b"READY", out)

        state = Path(self.mktemp())
        state.mkdir()
        clients = [{**BASIC_CLIENT, "redirect_uris": ["not a url"]}]
        try:
            provider = yield start_node_provider(
                reactor=reactor, state=state, users=USERS, clients=clients
            )
        except NodeProviderError as e:
            self.assertIn("exited (code 2)", str(e))
            self.assertIn("invalid client basic-app", str(e))
            self.assertIn("redirect_uris", str(e))
        else:
            yield provider.stop()
            self.fail("the provider started with a bad client")
