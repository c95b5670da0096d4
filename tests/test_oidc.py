"""
Tests for L{appproxy.oidc}: the pure checks directly and with Hypothesis, the
key cache with a fake clock, and L{RelyingParty} against L{FakeProvider} over
real TLS on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, cast
from urllib.parse import parse_qs, parse_qsl, urlsplit

import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from appproxy.daemon import pki
from appproxy.oidc.authorize import (
    authorization_url,
    check_authorization_response,
    end_session_url,
    new_pkce,
)
from appproxy.oidc.client import MAX_RESPONSE_SIZE, RelyingParty
from appproxy.oidc.errors import SignInError
from appproxy.oidc.jwks import JwksCache
from appproxy.oidc.keys import parse_jwks
from appproxy.oidc.metadata import ProviderMetadata, parse_metadata
from appproxy.oidc.settings import RelyingPartySettings, parse_provider_address
from appproxy.oidc.tokens import (
    TokenResponse,
    check_id_token_claims,
    parse_token_response,
    verify_id_token,
)

from .fakeprovider import FakeProvider, ServedProvider, serve_tls

ISSUER = "https://idp.test"
CLIENT_ID = "appproxy"
NOW = 1_700_000_000

SETTINGS = RelyingPartySettings(
    issuer=ISSUER,
    client_id=CLIENT_ID,
    client_secret="s3cr:et/+%",
    redirect_uri="https://login.example.com/.appproxy/callback",
)

GOOD_DOCUMENT: dict[str, object] = {
    "issuer": ISSUER,
    "authorization_endpoint": "https://idp.test/authorize",
    "token_endpoint": "https://idp.test/token",
    "jwks_uri": "https://keys.idp.test/jwks",
    "userinfo_endpoint": "https://idp.test/userinfo",
    "end_session_endpoint": "https://idp.test/logout",
    "code_challenge_methods_supported": ["plain", "S256"],
    "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    "id_token_signing_alg_values_supported": ["RS256"],
    "authorization_response_iss_parameter_supported": True,
}
METADATA = parse_metadata(json.dumps(GOOD_DOCUMENT).encode(), ISSUER)

# Key generation is slow: providers shared by the pure tests (their clocks
# are fixed, so their tokens are deterministic apart from signatures).
_RSA_PROVIDER = FakeProvider(issuer=ISSUER, client_id=CLIENT_ID, now=lambda: NOW)
_EC_PROVIDER = FakeProvider(issuer=ISSUER, client_id=CLIENT_ID, algorithm="ES256", now=lambda: NOW)
_CA = pki.generate_ca("oidc test CA")


def reason_of(test: SynchronousTestCase, step: str, call: Callable[[], object]) -> str:
    """Call C{call}; it must raise L{SignInError} for C{step}; return the reason."""
    with test.assertRaises(SignInError) as caught:
        call()
    test.assertEqual(caught.exception.step, step, caught.exception.reason)
    return caught.exception.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(SETTINGS.client_auth, "client_secret_basic")
        self.assertEqual(SETTINGS.scopes, ("openid", "profile", "email"))
        self.assertEqual(SETTINGS.algorithms, ("RS256", "PS256", "ES256"))
        self.assertEqual(SETTINGS.clock_skew, 60)

    def test_secret_not_in_repr(self) -> None:
        self.assertNotIn("s3cr", repr(SETTINGS))

    def test_refuses_symmetric_and_none_algorithms(self) -> None:
        for algorithms in [("none",), ("HS256",), ("RS256", "HS512"), ("RS1",), ()]:
            with self.assertRaises(ValueError, msg=algorithms):
                attrs.evolve(SETTINGS, algorithms=algorithms)

    def test_refuses_bad_values(self) -> None:
        cases: list[dict[str, Any]] = [
            {"issuer": "http://idp.test"},
            {"issuer": "https://idp.test/?q"},
            {"issuer": "https://user@idp.test"},
            {"redirect_uri": "http://login.example.com/cb"},
            {"scopes": ("profile",)},
            {"scopes": ("openid", "a b")},
            {"client_auth": "private_key_jwt"},
            {"client_id": ""},
            {"client_secret": ""},
            {"clock_skew": -1},
            {"timeout": 0},
            {"provider_address": "127.0.0.1:"},
            {"provider_address": "127.0.0.1:70000"},
            {"provider_address": "[::1"},
            {"provider_address": "a b"},
            {"ca_pem": b"not a certificate"},
        ]
        for changes in cases:
            with self.assertRaises(ValueError, msg=changes):
                attrs.evolve(SETTINGS, **changes)

    def test_provider_address(self) -> None:
        self.assertEqual(parse_provider_address("idp.internal"), ("idp.internal", None))
        self.assertEqual(parse_provider_address("10.0.0.1:8443"), ("10.0.0.1", 8443))
        self.assertEqual(parse_provider_address("[fd00::1]:8443"), ("fd00::1", 8443))
        self.assertEqual(parse_provider_address("[fd00::1]"), ("fd00::1", None))
        self.assertEqual(parse_provider_address("fd00::1"), ("fd00::1", None))


class ParseMetadataTests(SynchronousTestCase):
    def parse(self, changes: Mapping[str, object]) -> ProviderMetadata:
        document = {**GOOD_DOCUMENT, **changes}
        document = {name: value for name, value in document.items() if value is not None}
        return parse_metadata(json.dumps(document).encode(), ISSUER)

    def refused(self, changes: Mapping[str, object]) -> str:
        return reason_of(self, "discovery", lambda: self.parse(changes))

    def test_good(self) -> None:
        self.assertEqual(
            METADATA,
            ProviderMetadata(
                issuer=ISSUER,
                authorization_endpoint="https://idp.test/authorize",
                token_endpoint="https://idp.test/token",
                jwks_uri="https://keys.idp.test/jwks",
                userinfo_endpoint="https://idp.test/userinfo",
                end_session_endpoint="https://idp.test/logout",
                code_challenge_methods_supported=("plain", "S256"),
                token_endpoint_auth_methods_supported=(
                    "client_secret_basic",
                    "client_secret_post",
                ),
                id_token_signing_alg_values_supported=("RS256",),
                authorization_response_iss_parameter_supported=True,
            ),
        )

    def test_minimal(self) -> None:
        metadata = self.parse(
            {
                "userinfo_endpoint": None,
                "end_session_endpoint": None,
                "code_challenge_methods_supported": None,
                "token_endpoint_auth_methods_supported": None,
                "id_token_signing_alg_values_supported": None,
                "authorization_response_iss_parameter_supported": None,
            }
        )
        self.assertIsNone(metadata.end_session_endpoint)
        self.assertIsNone(metadata.code_challenge_methods_supported)
        self.assertEqual(metadata.token_endpoint_auth_methods_supported, ("client_secret_basic",))
        self.assertFalse(metadata.authorization_response_iss_parameter_supported)

    def test_not_a_json_object(self) -> None:
        for document in [b"", b"<html>", b"[]", b'"issuer"', b"\xff\xfe", b"[" * 100000]:
            reason = reason_of(self, "discovery", partial(parse_metadata, document, ISSUER))
            self.assertIn("not a JSON object", reason)

    def test_duplicate_members_and_nan(self) -> None:
        good = json.dumps(GOOD_DOCUMENT)
        duplicated = good[:-1] + ', "issuer": "https://idp.test"}'
        reason_of(self, "discovery", lambda: parse_metadata(duplicated.encode(), ISSUER))
        nan = good[:-1] + ', "x": NaN}'
        reason_of(self, "discovery", lambda: parse_metadata(nan.encode(), ISSUER))

    def test_issuer_must_match_exactly(self) -> None:
        for issuer in ["https://idp.test/", "https://IDP.test", "https://evil.test", None, 1]:
            self.assertIn("(issuer)", self.refused({"issuer": issuer}))

    def test_required_endpoints(self) -> None:
        for name in ["authorization_endpoint", "token_endpoint", "jwks_uri"]:
            for value in [
                None,
                "http://idp.test/x",
                "/relative",
                "https://",
                "https://u:p@idp.test/x",
                "https://idp.test/x#f",
                "https://idp.test/a b",
                "https://idp.test:99999/x",
                ["https://idp.test/x"],
            ]:
                self.assertIn(name, self.refused({name: value}))

    def test_optional_endpoints(self) -> None:
        for name in ["userinfo_endpoint", "end_session_endpoint"]:
            self.assertIn(name, self.refused({name: "http://idp.test/x"}))
            self.assertIn(name, self.refused({name: 7}))

    def test_endpoint_query_allowed(self) -> None:
        metadata = self.parse({"authorization_endpoint": "https://idp.test/authorize?p=b2c"})
        self.assertEqual(metadata.authorization_endpoint, "https://idp.test/authorize?p=b2c")

    def test_pkce_without_s256(self) -> None:
        for methods in [["plain"], []]:
            self.assertIn("S256", self.refused({"code_challenge_methods_supported": methods}))
        self.assertIn(
            "code_challenge_methods_supported",
            self.refused({"code_challenge_methods_supported": "S256"}),
        )

    def test_bad_lists_and_flags(self) -> None:
        for name, value in [
            ("token_endpoint_auth_methods_supported", "client_secret_basic"),
            ("id_token_signing_alg_values_supported", ["RS256", 1]),
            ("authorization_response_iss_parameter_supported", "true"),
            ("authorization_response_iss_parameter_supported", 1),
        ]:
            self.assertIn(name, self.refused({name: value}))

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
            lambda children: st.lists(children) | st.dictionaries(st.text(), children),
            max_leaves=20,
        )
    )
    def test_arbitrary_json_raises_only_sign_in_error(self, value: object) -> None:
        self._only_sign_in_error(json.dumps(value).encode())

    @given(
        st.fixed_dictionaries(
            {},
            optional={
                name: st.none()
                | st.booleans()
                | st.integers()
                | st.text()
                | st.sampled_from(["https://idp.test/x", "http://idp.test/x", ISSUER])
                | st.lists(st.sampled_from(["S256", "plain", "RS256", 1]))
                for name in GOOD_DOCUMENT
            },
        )
    )
    def test_metadata_like_json_raises_only_sign_in_error(self, value: dict[str, object]) -> None:
        metadata = self._only_sign_in_error(json.dumps(value).encode())
        if metadata is not None:
            self.assertEqual(metadata.issuer, ISSUER)
            self.assertTrue(metadata.jwks_uri.startswith("https://"))

    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_raise_only_sign_in_error(self, document: bytes) -> None:
        self._only_sign_in_error(document)

    def _only_sign_in_error(self, document: bytes) -> ProviderMetadata | None:
        try:
            return parse_metadata(document, ISSUER)
        except SignInError as error:
            self.assertEqual(error.step, "discovery")
            return None


class AuthorizationRequestTests(SynchronousTestCase):
    def test_pkce(self) -> None:
        verifier, challenge = new_pkce()
        self.assertGreaterEqual(len(verifier), 43)
        self.assertLessEqual(len(verifier), 128)
        self.assertRegex(verifier, r"\A[A-Za-z0-9_-]+\Z")
        self.assertEqual(challenge, b64(hashlib.sha256(verifier.encode()).digest()))
        self.assertNotEqual(new_pkce()[0], verifier)

    def test_authorization_url(self) -> None:
        url = authorization_url(
            METADATA, SETTINGS, state="the-state", nonce="the-nonce", code_challenge="ch"
        )
        parts = urlsplit(url)
        self.assertEqual(
            (parts.scheme, parts.netloc, parts.path), ("https", "idp.test", "/authorize")
        )
        self.assertEqual(
            dict(parse_qsl(parts.query)),
            {
                "response_type": "code",
                "response_mode": "query",
                "client_id": CLIENT_ID,
                "redirect_uri": "https://login.example.com/.appproxy/callback",
                "scope": "openid profile email",
                "state": "the-state",
                "nonce": "the-nonce",
                "code_challenge": "ch",
                "code_challenge_method": "S256",
            },
        )
        self.assertIn("scope=openid%20profile%20email", parts.query)

    def test_optional_parameters_and_existing_query(self) -> None:
        metadata = attrs.evolve(METADATA, authorization_endpoint="https://idp.test/auth?p=b2c_1")
        url = authorization_url(
            metadata,
            SETTINGS,
            state="s",
            nonce="n",
            code_challenge="c",
            prompt="login",
            acr_values="mfa phr",
            max_age=0,
            login_hint="alice@example.com",
        )
        query = parse_qs(urlsplit(url).query)
        self.assertEqual(query["p"], ["b2c_1"])
        self.assertEqual(query["prompt"], ["login"])
        self.assertEqual(query["acr_values"], ["mfa phr"])
        self.assertEqual(query["max_age"], ["0"])
        self.assertEqual(query["login_hint"], ["alice@example.com"])
        with self.assertRaises(ValueError):
            authorization_url(
                METADATA, SETTINGS, state="s", nonce="n", code_challenge="c", max_age=-1
            )

    def test_end_session_url(self) -> None:
        url = end_session_url(
            METADATA,
            SETTINGS,
            id_token_hint="tok",
            post_logout_redirect_uri="https://wiki.example.com/",
        )
        assert url is not None
        self.assertTrue(url.startswith("https://idp.test/logout?"))
        self.assertEqual(
            dict(parse_qsl(urlsplit(url).query)),
            {
                "client_id": CLIENT_ID,
                "id_token_hint": "tok",
                "post_logout_redirect_uri": "https://wiki.example.com/",
            },
        )
        no_logout = attrs.evolve(METADATA, end_session_endpoint=None)
        self.assertIsNone(
            end_session_url(no_logout, SETTINGS, id_token_hint=None, post_logout_redirect_uri=None)
        )


class CheckAuthorizationResponseTests(SynchronousTestCase):
    def check(self, args: Mapping[str, str], metadata: ProviderMetadata = METADATA) -> str:
        return check_authorization_response(args, expected_state="state-1", metadata=metadata)

    def test_good(self) -> None:
        self.assertEqual(self.check({"code": "c0de", "state": "state-1", "iss": ISSUER}), "c0de")

    def test_state(self) -> None:
        for args in [
            {"code": "c", "iss": ISSUER},
            {"code": "c", "iss": ISSUER, "state": ""},
            {"code": "c", "iss": ISSUER, "state": "state-2"},
            {"code": "c", "iss": ISSUER, "state": "state-1x"},
            {"code": "c", "iss": ISSUER, "state": "st\u00e4te-1"},
        ]:
            self.assertIn("state", reason_of(self, "state", partial(self.check, args)))

    def test_error_with_wrong_state_is_a_state_failure(self) -> None:
        """A forged error response is not believed."""
        reason = reason_of(
            self,
            "state",
            lambda: self.check({"error": "access_denied", "error_description": "Call 555-0100"}),
        )
        self.assertNotIn("555", reason)

    def test_iss(self) -> None:
        reason = reason_of(
            self,
            "authorization",
            lambda: self.check({"code": "c", "state": "state-1", "iss": "https://evil.test"}),
        )
        self.assertIn("(iss)", reason)
        # Advertised but missing: refused.
        reason = reason_of(
            self, "authorization", lambda: self.check({"code": "c", "state": "state-1"})
        )
        self.assertIn("(iss)", reason)
        # Not advertised and missing: fine.
        quiet = attrs.evolve(METADATA, authorization_response_iss_parameter_supported=False)
        self.assertEqual(self.check({"code": "c", "state": "state-1"}, quiet), "c")
        # Not advertised but present: must still match.
        reason_of(
            self,
            "authorization",
            lambda: self.check(
                {"code": "c", "state": "state-1", "iss": "https://evil.test"}, quiet
            ),
        )

    def test_provider_error(self) -> None:
        reason = reason_of(
            self,
            "authorization",
            lambda: self.check(
                {
                    "state": "state-1",
                    "iss": ISSUER,
                    "error": "access_denied",
                    "error_description": "The user said no",
                }
            ),
        )
        self.assertEqual(
            reason, "The identity provider refused the sign-in: access_denied (The user said no)"
        )

    def test_provider_error_text_is_cleaned(self) -> None:
        reason = reason_of(
            self,
            "authorization",
            lambda: self.check(
                {
                    "state": "state-1",
                    "iss": ISSUER,
                    "error": "bad\r\nerror",
                    "error_description": "line\r\nSet-Cookie: x\u202e" + "A" * 1000,
                }
            ),
        )
        self.assertIn("unknown error", reason)
        self.assertTrue(all(" " <= char <= "~" for char in reason), reason)
        self.assertLess(len(reason), 300)
        self.assertTrue(reason.endswith("...)"))

    @given(st.text(), st.text())
    def test_provider_error_text_is_always_printable(self, error: str, description: str) -> None:
        args = {"state": "state-1", "iss": ISSUER, "error": error, "error_description": description}
        reason = reason_of(self, "authorization", lambda: self.check(args))
        self.assertTrue(all(" " <= char <= "~" for char in reason), reason)
        self.assertLess(len(reason), 350)

    def test_missing_or_bad_code(self) -> None:
        for args in [
            {"state": "state-1", "iss": ISSUER},
            {"state": "state-1", "iss": ISSUER, "code": ""},
            {"state": "state-1", "iss": ISSUER, "code": "a b"},
            {"state": "state-1", "iss": ISSUER, "code": "x" * 5000},
        ]:
            self.assertIn("code", reason_of(self, "authorization", partial(self.check, args)))


def _keys(provider: FakeProvider) -> dict[str, jwt.PyJWK]:
    keys, skipped = parse_jwks(json.dumps(provider.jwks()).encode())
    assert not skipped, skipped
    return keys


class VerifyIdTokenTests(SynchronousTestCase):
    """Each attack the fake provider can mount is refused, for the right reason."""

    def verify(
        self,
        token: str,
        *,
        keys: Mapping[str, jwt.PyJWK] | None = None,
        settings: RelyingPartySettings = SETTINGS,
        nonce: str = "n-1",
        now: int = NOW,
        max_age: int | None = None,
    ) -> dict[str, Any]:
        return verify_id_token(
            token,
            keys=_keys(_RSA_PROVIDER) if keys is None else keys,
            settings=settings,
            metadata=METADATA,
            nonce=nonce,
            now=now,
            max_age=max_age,
        )

    def refused(self, token: str, **kwargs: Any) -> str:
        return reason_of(self, "id-token", lambda: self.verify(token, **kwargs))

    def mode(self, mode: str) -> str:
        return self.refused(_RSA_PROVIDER.issue_id_token("n-1", mode=mode))

    def test_good(self) -> None:
        claims = self.verify(_RSA_PROVIDER.issue_id_token("n-1"))
        self.assertEqual(claims["sub"], "248289761001")
        self.assertEqual(claims["nonce"], "n-1")
        self.assertEqual(claims["groups"], ["staff", "wiki-editors"])

    def test_es256(self) -> None:
        token = _EC_PROVIDER.issue_id_token("n-1")
        self.assertEqual(self.verify(token, keys=_keys(_EC_PROVIDER))["sub"], "248289761001")
        # Not in the allow-list: refused.
        reason = self.refused(
            token, keys=_keys(_EC_PROVIDER), settings=attrs.evolve(SETTINGS, algorithms=("RS256",))
        )
        self.assertIn("(alg)", reason)

    def test_alg_none(self) -> None:
        self.assertEqual(
            self.mode("alg-none"),
            "The ID token is signed with an algorithm that is not allowed (alg)",
        )

    def test_hmac_with_public_key(self) -> None:
        self.assertIn("(alg)", self.mode("hs256-public-key"))

    def test_bad_signature(self) -> None:
        self.assertEqual(self.mode("bad-signature"), "The ID token's signature is not valid")

    def test_signature_from_another_key_with_the_same_kid(self) -> None:
        token = _EC_PROVIDER.issue_id_token("n-1")
        other = FakeProvider(algorithm="ES256", now=lambda: NOW)
        jwks = other.jwks()
        jwks["keys"][0]["kid"] = _EC_PROVIDER.kid  # type: ignore[index]
        keys, _ = parse_jwks(json.dumps(jwks).encode())
        self.assertEqual(self.refused(token, keys=keys), "The ID token's signature is not valid")

    def test_wrong_issuer(self) -> None:
        self.assertIn("(iss)", self.mode("wrong-iss"))

    def test_wrong_audience(self) -> None:
        self.assertEqual(
            self.mode("wrong-aud"), "The ID token's audience is not this service (aud)"
        )

    def test_azp(self) -> None:
        self.assertIn("(azp)", self.mode("wrong-azp"))
        self.assertIn("(azp)", self.mode("multiple-aud-no-azp"))
        token = _RSA_PROVIDER.issue_id_token(
            "n-1", claims={"aud": [CLIENT_ID, "other"], "azp": CLIENT_ID}
        )
        self.assertEqual(self.verify(token)["azp"], CLIENT_ID)

    def test_nonce(self) -> None:
        self.assertIn("(nonce)", self.mode("wrong-nonce"))
        self.assertIn("(nonce)", self.mode("no-nonce"))

    def test_expired(self) -> None:
        self.assertEqual(self.mode("expired"), "The ID token has expired (exp)")
        token = _RSA_PROVIDER.issue_id_token("n-1")
        # Within the skew: accepted; past it: refused.
        lifetime = _RSA_PROVIDER.token_lifetime
        self.verify(token, now=NOW + lifetime + SETTINGS.clock_skew - 1)
        self.assertIn("(exp)", self.refused(token, now=NOW + lifetime + SETTINGS.clock_skew))

    def test_issued_in_the_future(self) -> None:
        self.assertIn("(iat)", self.mode("future-iat"))
        token = _RSA_PROVIDER.issue_id_token("n-1")
        self.verify(token, now=NOW - SETTINGS.clock_skew)
        self.assertIn("(iat)", self.refused(token, now=NOW - SETTINGS.clock_skew - 1))

    def test_not_before_in_the_future(self) -> None:
        self.assertIn("(nbf)", self.mode("future-nbf"))

    def test_missing_iat(self) -> None:
        self.assertEqual(self.mode("missing-iat"), "The ID token has no valid issue time (iat)")

    def test_missing_sub(self) -> None:
        self.assertIn("(sub)", self.mode("no-sub"))

    def test_unknown_kid(self) -> None:
        self.assertEqual(
            self.mode("unknown-kid"),
            "The ID token is signed with a key the provider does not publish (kid)",
        )

    def test_max_age(self) -> None:
        token = _RSA_PROVIDER.issue_id_token("n-1", claims={"auth_time": NOW - 600})
        self.verify(token, max_age=600)
        self.assertIn("(auth_time)", self.refused(token, max_age=500))
        no_auth_time = _RSA_PROVIDER.issue_id_token("n-1", claims={"auth_time": None})
        self.assertIn("(auth_time)", self.refused(no_auth_time, max_age=600))

    def _forge(
        self, header: Mapping[str, object], claims: Mapping[str, object] | None = None
    ) -> str:
        """A token signed by the RSA provider's key with a header of our choosing."""
        payload = claims or {
            "iss": ISSUER,
            "aud": CLIENT_ID,
            "sub": "x",
            "nonce": "n-1",
            "iat": NOW,
            "exp": NOW + 60,
        }
        key = _RSA_PROVIDER._keys[-1]
        headers = {"kid": key.kid, **header}
        if headers["kid"] is None:
            del headers["kid"]
        return jwt.encode(dict(payload), key.private, algorithm="RS256", headers=headers)

    def test_no_kid_and_one_key(self) -> None:
        self.assertEqual(self.verify(self._forge({"kid": None}))["sub"], "x")

    def test_no_kid_and_several_keys(self) -> None:
        jwks = _RSA_PROVIDER.jwks()
        second = FakeProvider(now=lambda: NOW).jwks()["keys"][0]
        jwks["keys"].append(second)
        keys, _ = parse_jwks(json.dumps(jwks).encode())
        reason = self.refused(self._forge({"kid": None}), keys=keys)
        self.assertIn("(kid)", reason)

    def test_key_of_the_wrong_type(self) -> None:
        """An RS256 header naming the kid of an EC key is refused before any verification."""
        keys = {**_keys(_RSA_PROVIDER), **_keys(_EC_PROVIDER)}
        reason = self.refused(self._forge({"kid": _EC_PROVIDER.kid}), keys=keys)
        self.assertIn("(kty)", reason)

    def test_key_alg_must_match(self) -> None:
        jwks = _RSA_PROVIDER.jwks()
        jwks["keys"][0]["alg"] = "PS256"  # type: ignore[index]
        keys, _ = parse_jwks(json.dumps(jwks).encode())
        self.assertIn("(alg)", self.refused(self._forge({}), keys=keys))

    def test_key_use_must_be_sig(self) -> None:
        jwks = _RSA_PROVIDER.jwks()
        jwks["keys"][0]["use"] = "enc"  # type: ignore[index]
        keys, _ = parse_jwks(json.dumps(jwks).encode())
        self.assertIn("(use)", self.refused(self._forge({}), keys=keys))

    def test_key_ops(self) -> None:
        jwks = _RSA_PROVIDER.jwks()
        jwks["keys"][0]["key_ops"] = ["encrypt"]  # type: ignore[index]
        keys, _ = parse_jwks(json.dumps(jwks).encode())
        self.assertIn("(key_ops)", self.refused(self._forge({}), keys=keys))

    def test_crit(self) -> None:
        self.assertIn("(crit)", self.refused(self._forge({"crit": ["exp"], "exp": 1})))

    def test_malformed(self) -> None:
        good = _RSA_PROVIDER.issue_id_token("n-1")
        head, payload, signature = good.split(".")
        for token in [
            "",
            "a.b",
            "a.b.c.d",
            good + ".",
            "!!!." + payload + "." + signature,
            b64(b"[]") + "." + payload + "." + signature,
            b64(b'{"alg":"RS256","alg":"none"}') + "." + payload + "." + signature,
            head + "." + b64(b"[1]") + "." + signature,
            "x" * 70000,
            "\u00e9.a.b",
        ]:
            self.refused(token)
        self.assertIn("encrypted", self.refused("a.b.c.d.e"))

    def test_claims_not_an_object(self) -> None:
        key = _RSA_PROVIDER._keys[-1]
        token = jwt.api_jws.encode(b"[1, 2]", key.private, "RS256", {"kid": key.kid})
        self.assertEqual(self.refused(token), "The ID token's claims are malformed")


def _valid_claims(now: int) -> dict[str, object]:
    return {
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "sub": "alice",
        "nonce": "n-1",
        "iat": now,
        "exp": now + 300,
    }


def _check(claims: Mapping[str, object], now: int, max_age: int | None = None) -> None:
    check_id_token_claims(
        claims,
        issuer=ISSUER,
        client_id=CLIENT_ID,
        nonce="n-1",
        now=now,
        clock_skew=60,
        max_age=max_age,
    )


_CHECKED = {"iss", "aud", "azp", "sub", "nonce", "iat", "exp", "nbf", "auth_time"}

# A claim, and values for it that must be refused.
_BAD_VALUES: dict[str, st.SearchStrategy[object]] = {
    "iss": st.sampled_from([None, "", ISSUER + "/", "https://IDP.test", "https://evil.test", 1]),
    "aud": st.sampled_from([None, "", "other", ["other"], [], [CLIENT_ID, 1], {"a": 1}, 7]),
    "sub": st.sampled_from([None, "", 5, ["alice"]]),
    "nonce": st.sampled_from([None, "", "n-2", "n-1 ", "N-1", 1]),
    "iat": st.sampled_from([None, "0", True, [1], float("inf")]),
    "exp": st.sampled_from([None, "9999999999", True, float("nan"), float("-inf")]),
}


class CheckClaimsPropertyTests(SynchronousTestCase):
    @given(
        st.integers(min_value=0, max_value=2**40),
        st.integers(min_value=-(10**6), max_value=60),
        st.integers(min_value=-59, max_value=10**6),
        st.dictionaries(st.text().filter(lambda name: name not in _CHECKED), st.text()),
    )
    def test_valid_claims_pass(
        self, now: int, iat_offset: int, exp_offset: int, extra: dict[str, str]
    ) -> None:
        claims: dict[str, object] = {**extra, **_valid_claims(now)}
        claims["iat"] = now + iat_offset
        claims["exp"] = now + exp_offset
        _check(claims, now)

    @given(st.data())
    def test_one_bad_claim_is_named(self, data: st.DataObject) -> None:
        now = NOW
        name = data.draw(st.sampled_from(sorted(_BAD_VALUES)))
        value = data.draw(_BAD_VALUES[name])
        claims = _valid_claims(now)
        if value is None:
            del claims[name]
        else:
            claims[name] = value
        with self.assertRaises(SignInError) as caught:
            _check(claims, now)
        self.assertEqual(caught.exception.step, "id-token")
        self.assertIn(f"({name})", caught.exception.reason)

    @given(st.integers(min_value=1, max_value=10**8))
    def test_time_claims_outside_the_skew(self, delta: int) -> None:
        for name, value in [
            ("exp", NOW - 60 - (delta - 1)),
            ("iat", NOW + 60 + delta),
            ("nbf", NOW + 60 + delta),
        ]:
            claims: dict[str, object] = {**_valid_claims(NOW), name: value}
            with self.assertRaises(SignInError) as caught:
                _check(claims, NOW)
            self.assertIn(f"({name})", caught.exception.reason)
        # Just inside the skew: accepted.
        _check({**_valid_claims(NOW), "exp": NOW - 59, "iat": NOW + 60, "nbf": NOW + 60}, NOW)

    @given(st.lists(st.text(min_size=1), max_size=4), st.none() | st.text())
    def test_azp(self, others: list[str], azp: str | None) -> None:
        claims: dict[str, object] = {**_valid_claims(NOW), "aud": [CLIENT_ID, *others]}
        if azp is not None:
            claims["azp"] = azp
        several = len(claims["aud"]) > 1  # type: ignore[arg-type]
        if azp == CLIENT_ID or (azp is None and not several):
            _check(claims, NOW)
        else:
            with self.assertRaises(SignInError) as caught:
                _check(claims, NOW)
            self.assertIn("(azp)", caught.exception.reason)


class ParseJwksTests(SynchronousTestCase):
    def test_skips_unusable_keys(self) -> None:
        good = cast(dict[str, Any], _RSA_PROVIDER.jwks()["keys"][0])
        ec_key = cast(dict[str, Any], _EC_PROVIDER.jwks()["keys"][0])
        small_rsa = _small_rsa_jwk()
        private = {**ec_key, "d": "AAAA", "kid": "private"}
        document = {
            "keys": [
                good,
                {"kty": "oct", "k": b64(b"secret"), "kid": "hmac"},
                {"kty": "XYZ", "kid": "odd"},
                "not an object",
                {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
                {**ec_key, "kid": "enc-alg", "alg": "ECDH-ES"},
                {**good, "kid": 5},
                small_rsa,
                private,
                ec_key,
                {**ec_key, "kid": None},
                ec_key,
            ]
        }
        keys, skipped = parse_jwks(json.dumps(document).encode())
        self.assertEqual(
            [key.key_id for key in keys.values()],
            [_RSA_PROVIDER.kid, _EC_PROVIDER.kid, None, _EC_PROVIDER.kid],
        )
        self.assertEqual(list(keys)[:2], [_RSA_PROVIDER.kid, _EC_PROVIDER.kid])
        self.assertEqual(len(skipped), 8)
        self.assertIn("symmetric", skipped[0])
        self.assertTrue(all("secret" not in reason for reason in skipped))

    def test_not_a_jwks(self) -> None:
        for document in [b"", b"[]", b'{"keys": {}}', b"{}"]:
            with self.assertRaises(ValueError):
                parse_jwks(document)


def _small_rsa_jwk() -> dict[str, object]:
    key = rsa.generate_private_key(65537, 1024)
    return {**jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "small"}


def _jwks_document(*providers: FakeProvider) -> bytes:
    keys: list[object] = []
    for provider in providers:
        keys += provider.jwks()["keys"]
    return json.dumps({"keys": keys}).encode()


class JwksCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.fetches: list[Deferred[bytes]] = []
        self.cache = JwksCache(self.fetch, self.clock, min_refetch_interval=30.0, max_age=3600.0)

    def fetch(self) -> Deferred[bytes]:
        deferred: Deferred[bytes] = Deferred()
        self.fetches.append(deferred)
        return deferred

    def kids(self, deferred: Deferred[Mapping[str, jwt.PyJWK]]) -> list[str | None]:
        return [key.key_id for key in self.successResultOf(deferred).values()]

    def test_fetches_once_and_serves_from_cache(self) -> None:
        first = self.cache.get_keys(_RSA_PROVIDER.kid)
        self.assertNoResult(first)
        self.fetches[0].callback(_jwks_document(_RSA_PROVIDER))
        self.assertEqual(self.kids(first), [_RSA_PROVIDER.kid])
        self.clock.advance(100)
        self.assertEqual(self.kids(self.cache.get_keys(_RSA_PROVIDER.kid)), [_RSA_PROVIDER.kid])
        self.assertEqual(self.kids(self.cache.get_keys(None)), [_RSA_PROVIDER.kid])
        self.assertEqual(len(self.fetches), 1)

    def test_concurrent_callers_share_a_fetch(self) -> None:
        waiting = [self.cache.get_keys(kid) for kid in ["a", "b", None, _RSA_PROVIDER.kid]]
        self.assertEqual(len(self.fetches), 1)
        self.fetches[0].callback(_jwks_document(_RSA_PROVIDER))
        for deferred in waiting:
            self.assertEqual(self.kids(deferred), [_RSA_PROVIDER.kid])

    def test_unknown_kid_refetches_after_the_interval(self) -> None:
        self.cache.get_keys(None)
        self.fetches[0].callback(_jwks_document(_RSA_PROVIDER))
        # Rotation: the new kid is not known yet, but the last fetch was
        # just now: the cached keys are served.
        self.assertEqual(self.kids(self.cache.get_keys("new")), [_RSA_PROVIDER.kid])
        self.assertEqual(len(self.fetches), 1)
        self.clock.advance(30)
        rotated = self.cache.get_keys(_EC_PROVIDER.kid)
        self.assertEqual(len(self.fetches), 2)
        self.fetches[1].callback(_jwks_document(_EC_PROVIDER))
        self.assertEqual(self.kids(rotated), [_EC_PROVIDER.kid])

    def test_unknown_kid_flood(self) -> None:
        """A flood of made-up kids makes at most one fetch per interval."""
        self.cache.get_keys(None)
        self.fetches[0].callback(_jwks_document(_RSA_PROVIDER))
        for second in range(301):
            for attempt in range(10):
                self.cache.get_keys(f"bogus-{second}-{attempt}")
            for fetch in self.fetches:
                if not fetch.called:
                    fetch.callback(_jwks_document(_RSA_PROVIDER))
            self.clock.advance(1)
        # 300 seconds: the first fetch plus one each 30 s.
        self.assertEqual(len(self.fetches), 1 + 10)
        self.assertEqual(self.cache.fetches, 11)

    def test_keys_expire(self) -> None:
        self.cache.get_keys(None)
        self.fetches[0].callback(_jwks_document(_RSA_PROVIDER))
        self.clock.advance(3599)
        self.cache.get_keys(_RSA_PROVIDER.kid)
        self.assertEqual(len(self.fetches), 1)
        self.clock.advance(1)
        refreshed = self.cache.get_keys(_RSA_PROVIDER.kid)
        self.assertEqual(len(self.fetches), 2)
        self.fetches[1].callback(_jwks_document(_RSA_PROVIDER, _EC_PROVIDER))
        self.assertEqual(self.kids(refreshed), [_RSA_PROVIDER.kid, _EC_PROVIDER.kid])

    def test_failed_refetch_keeps_the_old_keys(self) -> None:
        self.cache.get_keys(None)
        self.fetches[0].callback(_jwks_document(_RSA_PROVIDER))
        self.clock.advance(60)
        refetch = self.cache.get_keys("unknown")
        self.fetches[1].errback(ConnectionRefusedError())
        self.assertEqual(self.kids(refetch), [_RSA_PROVIDER.kid])

    def test_invalid_document_keeps_the_old_keys(self) -> None:
        self.cache.get_keys(None)
        self.fetches[0].callback(_jwks_document(_RSA_PROVIDER))
        self.clock.advance(60)
        refetch = self.cache.get_keys("unknown")
        self.fetches[1].callback(b"<html>")
        self.assertEqual(self.kids(refetch), [_RSA_PROVIDER.kid])

    def test_no_keys_at_all(self) -> None:
        first = self.cache.get_keys("a")
        self.fetches[0].errback(ConnectionRefusedError())
        self.assertEqual(self.failureResultOf(first, SignInError).value.step, "id-token")
        # Within the interval: no new fetch, a failure at once.
        self.failureResultOf(self.cache.get_keys("a"), SignInError)
        self.assertEqual(len(self.fetches), 1)
        self.clock.advance(30)
        again = self.cache.get_keys("a")
        self.assertEqual(len(self.fetches), 2)
        self.fetches[1].callback(_jwks_document(_RSA_PROVIDER))
        self.assertEqual(self.kids(again), [_RSA_PROVIDER.kid])

    def test_skipped_keys_are_logged(self) -> None:
        events: list[dict[str, Any]] = []
        # A bound list.append cannot be declared to provide ILogObserver.
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        deferred = self.cache.get_keys(None)
        document = {"keys": [*_RSA_PROVIDER.jwks()["keys"], {"kty": "oct", "k": "c2VjcmV0"}]}
        self.fetches[0].callback(json.dumps(document).encode())
        self.assertEqual(self.kids(deferred), [_RSA_PROVIDER.kid])
        warnings = [event for event in events if event.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("symmetric", warnings[0]["reason"])
        self.assertNotIn("c2VjcmV0", repr(events))

    def test_cancelled_waiter(self) -> None:
        first = self.cache.get_keys(None)
        second = self.cache.get_keys(None)
        first.cancel()
        self.failureResultOf(first)
        self.fetches[0].callback(_jwks_document(_RSA_PROVIDER))
        self.assertEqual(self.kids(second), [_RSA_PROVIDER.kid])


class ParseTokenResponseTests(SynchronousTestCase):
    def test_good(self) -> None:
        body = json.dumps(
            {"id_token": "a.b.c", "access_token": "at", "token_type": "Bearer", "expires_in": 60}
        ).encode()
        response = parse_token_response(200, body)
        self.assertEqual(
            response, TokenResponse(id_token="a.b.c", access_token="at", expires_in=60)
        )
        self.assertNotIn("a.b.c", repr(response))
        self.assertNotIn("'at'", repr(response))
        self.assertEqual(
            parse_token_response(200, b'{"id_token": "t", "expires_in": "3600"}').expires_in, 3600
        )
        self.assertIsNone(
            parse_token_response(200, b'{"id_token": "t", "expires_in": true}').expires_in
        )

    def test_no_id_token(self) -> None:
        for body in [b"{}", b'{"id_token": ""}', b'{"id_token": 5}', b"[]", b"nope"]:
            reason_of(self, "token", partial(parse_token_response, 200, body))

    def test_provider_error(self) -> None:
        reason = reason_of(
            self,
            "token",
            lambda: parse_token_response(
                400, b'{"error": "invalid_grant", "error_description": "Code expired"}'
            ),
        )
        self.assertEqual(
            reason,
            "The identity provider refused to exchange the sign-in code: invalid_grant"
            " (Code expired)",
        )
        reason = reason_of(self, "token", lambda: parse_token_response(502, b"<html>Bad gateway"))
        self.assertIn("502", reason)


# --- against the fake provider over TLS ---------------------------------------


class RelyingPartyTests(TestCase):
    """L{RelyingParty} against L{FakeProvider}, over real TLS on 127.0.0.1."""

    def setUp(self) -> None:
        self.provider = FakeProvider(issuer=ISSUER, client_id=CLIENT_ID)
        self.served = self.serve(self.provider)
        # Key refetches allowed at once (the flood limit is tested with a
        # fake clock): only the unknown-kid tests below depend on it.
        self.rp = self.relying_party(self.served, refetch_interval=0.0)

    def serve(self, provider: FakeProvider) -> ServedProvider:
        served = serve_tls(provider, reactor, ca=_CA)
        self.addCleanup(served.stop)
        return served

    def relying_party(
        self, served: ServedProvider, refetch_interval: float = 30.0, **changes: Any
    ) -> RelyingParty:
        rp = RelyingParty(
            served.settings(**changes),
            clock=reactor,
            reactor=reactor,
            jwks_refetch_interval=refetch_interval,
        )
        self.addCleanup(rp.close)
        return rp

    async def sign_in(self, rp: RelyingParty | None = None, **request: Any) -> dict[str, Any]:
        """The whole flow, the browser's part played by the fake's authorize()."""
        rp = rp or self.rp
        metadata = await rp.metadata()
        verifier, challenge = new_pkce()
        url = authorization_url(
            metadata, rp.settings, state="st", nonce="nonce-1", code_challenge=challenge, **request
        )
        back = self.provider.authorize_url(url)
        self.assertTrue(back.startswith(rp.settings.redirect_uri + "?"))
        code = check_authorization_response(
            dict(parse_qsl(urlsplit(back).query)), expected_state="st", metadata=metadata
        )
        tokens = await rp.exchange_code(code, verifier)
        return await rp.verify(tokens.id_token, "nonce-1")

    async def sign_in_fails(self, step: str, rp: RelyingParty | None = None) -> str:
        try:
            await self.sign_in(rp)
        except SignInError as error:
            self.assertEqual(error.step, step, error.reason)
            return error.reason
        self.fail("the sign-in succeeded")

    async def test_discovery_is_cached(self) -> None:
        metadata = await self.rp.metadata()
        self.assertEqual(metadata.token_endpoint, ISSUER + "/token")
        self.assertIs(await self.rp.metadata(), metadata)
        self.assertEqual(self.provider.discovery_fetches, 1)

    async def test_sign_in_with_client_secret_basic(self) -> None:
        claims = await self.sign_in()
        self.assertEqual(claims["preferred_username"], "alice")
        [token_request] = self.provider.token_requests
        self.assertEqual(token_request["auth"], "client_secret_basic")
        self.assertNotIn("client_id", token_request)
        self.assertEqual(token_request["redirect_uri"], self.rp.settings.redirect_uri)
        self.assertEqual(self.provider.jwks_fetches, 1)
        # A second sign-in uses the cached keys and metadata.
        await self.sign_in()
        self.assertEqual(self.provider.jwks_fetches, 1)
        self.assertEqual(self.provider.discovery_fetches, 1)

    async def test_sign_in_with_client_secret_post(self) -> None:
        self.provider.client_auth = "client_secret_post"
        rp = self.relying_party(self.served, client_auth="client_secret_post")
        claims = await self.sign_in(rp)
        self.assertEqual(claims["sub"], "248289761001")
        [token_request] = self.provider.token_requests
        self.assertEqual(token_request["auth"], "client_secret_post")
        self.assertEqual(token_request["client_id"], CLIENT_ID)

    async def test_wrong_client_auth_method(self) -> None:
        rp = self.relying_party(self.served, client_auth="client_secret_post")
        reason = await self.sign_in_fails("token", rp)
        self.assertIn("invalid_client", reason)

    async def test_wrong_secret(self) -> None:
        rp = self.relying_party(self.served, client_secret="wrong")
        self.assertIn("invalid_client", await self.sign_in_fails("token", rp))

    async def test_token_endpoint_error(self) -> None:
        self.provider.token_error = (400, "invalid_grant", "The code has expired")
        reason = await self.sign_in_fails("token")
        self.assertEqual(
            reason,
            "The identity provider refused to exchange the sign-in code: invalid_grant"
            " (The code has expired)",
        )

    async def test_wrong_pkce_verifier(self) -> None:
        metadata = await self.rp.metadata()
        _, challenge = new_pkce()
        url = authorization_url(
            metadata, self.rp.settings, state="s", nonce="n", code_challenge=challenge
        )
        back = self.provider.authorize_url(url)
        code = dict(parse_qsl(urlsplit(back).query))["code"]
        other_verifier, _ = new_pkce()
        with self.assertRaises(SignInError) as caught:
            await self.rp.exchange_code(code, other_verifier)
        self.assertIn("PKCE", caught.exception.reason)

    async def test_code_is_single_use(self) -> None:
        metadata = await self.rp.metadata()
        verifier, challenge = new_pkce()
        url = authorization_url(
            metadata, self.rp.settings, state="s", nonce="n", code_challenge=challenge
        )
        code = dict(parse_qsl(urlsplit(self.provider.authorize_url(url)).query))["code"]
        await self.rp.exchange_code(code, verifier)
        with self.assertRaises(SignInError) as caught:
            await self.rp.exchange_code(code, verifier)
        self.assertIn("invalid_grant", caught.exception.reason)

    async def test_bad_tokens_over_the_wire(self) -> None:
        for mode, claim in [
            ("alg-none", "(alg)"),
            ("hs256-public-key", "(alg)"),
            ("wrong-iss", "(iss)"),
            ("wrong-aud", "(aud)"),
            ("wrong-azp", "(azp)"),
            ("wrong-nonce", "(nonce)"),
            ("expired", "(exp)"),
            ("future-iat", "(iat)"),
            ("future-nbf", "(nbf)"),
            ("missing-iat", "(iat)"),
            ("bad-signature", "signature"),
        ]:
            self.provider.mode = mode
            self.assertIn(claim, await self.sign_in_fails("id-token"), mode)

    async def test_key_rotation(self) -> None:
        """An unknown kid makes the cache refetch; after the rotation, sign-in works."""
        await self.sign_in()
        self.assertEqual(self.provider.jwks_fetches, 1)
        self.provider.rotate_keys()
        claims = await self.sign_in()
        self.assertEqual(claims["sub"], "248289761001")
        self.assertEqual(self.provider.jwks_fetches, 2)

    async def test_unknown_kid_is_refused_after_a_refetch(self) -> None:
        await self.sign_in()
        self.provider.mode = "unknown-kid"
        self.assertIn("(kid)", await self.sign_in_fails("id-token"))
        self.assertEqual(self.provider.jwks_fetches, 2)

    async def test_unknown_kid_refetch_is_rate_limited(self) -> None:
        rp = self.relying_party(self.served, refetch_interval=3600.0)
        await self.sign_in(rp)
        self.provider.mode = "unknown-kid"
        for _ in range(5):
            self.assertIn("(kid)", await self.sign_in_fails("id-token", rp))
        self.assertEqual(self.provider.jwks_fetches, 1)
        # Even a real rotation waits for the interval.
        self.provider.mode = "good"
        self.provider.rotate_keys()
        self.assertIn("(kid)", await self.sign_in_fails("id-token", rp))
        self.assertEqual(self.provider.jwks_fetches, 1)

    async def test_untrusted_certificate(self) -> None:
        rp = self.relying_party(self.served, ca_pem=pki.generate_ca("other CA").cert_pem)
        with self.assertRaises(SignInError) as caught:
            await rp.metadata()
        self.assertEqual(caught.exception.step, "discovery")
        self.assertEqual(
            caught.exception.reason,
            "The identity provider could not be reached (discovery document)",
        )
        self.assertEqual(self.provider.discovery_fetches, 0)

    async def test_certificate_for_another_name(self) -> None:
        """TLS verifies the URL's host name, not the address connected to."""
        other = FakeProvider(issuer="https://other.test", client_id=CLIENT_ID)
        served = self.serve(other)
        rp = self.relying_party(served, provider_address=self.served.address)
        with self.assertRaises(SignInError):
            await rp.metadata()
        self.assertEqual(self.provider.discovery_fetches, 0)

    async def test_failed_discovery_is_not_cached(self) -> None:
        self.provider.metadata_overrides = {"issuer": "https://evil.test"}
        with self.assertRaises(SignInError) as caught:
            await self.rp.metadata()
        self.assertIn("(issuer)", caught.exception.reason)
        self.provider.metadata_overrides = {}
        await self.rp.metadata()
        self.assertEqual(self.provider.discovery_fetches, 2)

    async def test_response_too_large(self) -> None:
        self.provider.metadata_overrides = {"padding": "x" * (MAX_RESPONSE_SIZE + 1)}
        with self.assertRaises(SignInError) as caught:
            await self.rp.metadata()
        self.assertEqual(
            caught.exception.reason, "The identity provider's discovery document is too large"
        )

    async def test_provider_address_is_for_the_issuers_host_only(self) -> None:
        """
        Only the issuer's host goes to provider_address: a JWKS elsewhere is
        reached by its own name (here localhost, port 1: nothing listens).
        """
        self.provider.metadata_overrides = {"jwks_uri": "https://localhost:1/jwks"}
        self.assertIn("signing keys", await self.sign_in_fails("id-token"))

    async def test_end_session_url(self) -> None:
        self.assertIsNone(self.rp.end_session_url("hint", None))
        await self.rp.metadata()
        url = self.rp.end_session_url("hint", "https://wiki.example.com/")
        assert url is not None
        self.assertTrue(url.startswith(ISSUER + "/end-session?"))
        self.assertEqual(dict(parse_qsl(urlsplit(url).query))["id_token_hint"], "hint")

    async def test_timeout(self) -> None:
        hanging = _Hanging()
        self.provider.putChild(b"hang", hanging)
        self.provider.metadata_overrides = {"token_endpoint": ISSUER + "/hang"}
        rp = self.relying_party(self.served, timeout=0.5)
        started = reactor.seconds()
        reason = await self.sign_in_fails("token", rp)
        self.assertEqual(reason, "The identity provider could not be reached (token endpoint)")
        self.assertLess(reactor.seconds() - started, 5)
        self.assertEqual(len(hanging.requests), 1)
        for request in hanging.requests:
            if not request._disconnected:
                request.finish()

    def test_refuses_http_urls(self) -> None:
        """The client speaks https only, whatever URL it is given."""
        deferred = self.rp._request("token", "token endpoint", "GET", "http://idp.test/x")
        failure = self.failureResultOf(deferred, SignInError)
        self.assertEqual(failure.value.step, "token")
        self.assertEqual(self.provider.discovery_fetches, 0)


class _Hanging(Resource):
    """Never answers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> object:
        self.requests.append(request)
        return NOT_DONE_YET


class RelyingPartyClockTests(SynchronousTestCase):
    """Caching of metadata, driven by a fake clock (no network: C{StubTreq})."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.provider = FakeProvider(issuer=ISSUER, client_id=CLIENT_ID, now=self.clock.seconds)
        self.stub = StubTreq(self.provider)
        self.rp = RelyingParty(SETTINGS, clock=self.clock, reactor=None, http=self.stub)

    def test_metadata_refetched_after_an_hour(self) -> None:
        self.successResultOf(self.rp.metadata())
        self.clock.advance(3599)
        self.successResultOf(self.rp.metadata())
        self.assertEqual(self.provider.discovery_fetches, 1)
        self.clock.advance(1)
        self.successResultOf(self.rp.metadata())
        self.assertEqual(self.provider.discovery_fetches, 2)

    def test_failed_refetch_uses_the_old_metadata(self) -> None:
        first = self.successResultOf(self.rp.metadata())
        self.clock.advance(3600)
        self.provider.metadata_overrides = {"jwks_uri": "http://idp.test/jwks"}
        self.assertIs(self.successResultOf(self.rp.metadata()), first)
        self.assertIs(self.successResultOf(self.rp.metadata()), first)
        # Each call tried again.
        self.assertEqual(self.provider.discovery_fetches, 3)

    def test_verify_with_fake_clock(self) -> None:
        token = self.provider.issue_id_token("n")
        claims = self.successResultOf(self.rp.verify(token, "n"))
        self.assertEqual(claims["sub"], "248289761001")
        self.clock.advance(self.provider.token_lifetime + SETTINGS.clock_skew)
        failure = self.failureResultOf(self.rp.verify(token, "n"), SignInError)
        self.assertIn("(exp)", failure.value.reason)

    def test_authorize_endpoint(self) -> None:
        """The fake's /authorize over HTTP: approves and redirects back."""
        metadata = self.successResultOf(self.rp.metadata())
        url = authorization_url(metadata, SETTINGS, state="s t", nonce="n", code_challenge="c")
        response = self.successResultOf(self.stub.get(url, allow_redirects=False))  # type: ignore[attr-defined]
        self.assertEqual(response.code, 302)
        [location] = response.headers.getRawHeaders(b"location")
        args = dict(parse_qsl(urlsplit(location.decode()).query))
        self.assertEqual(
            check_authorization_response(args, expected_state="s t", metadata=metadata),
            args["code"],
        )
        self.assertEqual(args["iss"], ISSUER)
        # An unregistered redirect URI is not redirected to.
        evil = authorization_url(
            metadata,
            attrs.evolve(SETTINGS, redirect_uri="https://evil.test/cb"),
            state="s",
            nonce="n",
            code_challenge="c",
        )
        response = self.successResultOf(self.stub.get(evil, allow_redirects=False))  # type: ignore[attr-defined]
        self.assertEqual(response.code, 400)

    def test_users_and_step_up(self) -> None:
        """The fake signs in the hinted user; acr_values bring the step-up claims."""
        self.provider.users["bob"] = {"sub": "bob-1", "preferred_username": "bob"}
        metadata = self.successResultOf(self.rp.metadata())
        verifier, challenge = new_pkce()
        url = authorization_url(
            metadata,
            SETTINGS,
            state="s",
            nonce="n",
            code_challenge=challenge,
            login_hint="bob",
            acr_values="mfa",
        )
        back = dict(parse_qsl(urlsplit(self.provider.authorize_url(url)).query))
        # Changing the claims after the authorization changes nothing.
        self.provider.users["bob"]["sub"] = "changed"
        tokens = self.successResultOf(self.rp.exchange_code(back["code"], verifier))
        claims = self.successResultOf(self.rp.verify(tokens.id_token, "n"))
        self.assertEqual(
            (claims["sub"], claims["acr"], claims["amr"]), ("bob-1", "mfa", ["pwd", "otp"])
        )

    def test_secret_never_logged(self) -> None:
        events: list[dict[str, Any]] = []
        # A bound list.append cannot be declared to provide ILogObserver.
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.provider.token_error = (401, "invalid_client", "bad secret")
        self.failureResultOf(self.rp.exchange_code("the-code", "the-verifier"), SignInError)
        self.provider.mode = "wrong-aud"
        token = self.provider.issue_id_token("n")
        self.failureResultOf(self.rp.verify(token, "n"), SignInError)
        text = repr(events)
        for secret in [SETTINGS.client_secret, "the-code", "the-verifier", token]:
            self.assertNotIn(secret, text)
        self.assertTrue(events)
