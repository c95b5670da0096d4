"""
Tests for L{appproxy.identity.headers} and L{appproxy.identity.assertion}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time
import unicodedata
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.access.session import Session
from appproxy.http.headers import is_valid_header_value
from appproxy.identity.assertion import (
    ASSERTION_LIFETIME,
    AssertionSigner,
    load_or_create_assertion_key,
)
from appproxy.identity.headers import (
    _UNSAFE,
    _UNSAFE_CATEGORIES,
    UnsafeClaimValue,
    drop_appproxy_set_cookies,
    identity_headers,
    normalise_header_name,
    strip_appproxy_cookies,
    strip_spoofed_headers,
)

Headers = list[tuple[bytes, bytes]]

SESSION = Session(
    app="wiki",
    user="alice",
    subject="00u1abcd",
    issuer="https://login.example.com",
    name="Alice Ångström",
    email="alice@example.com",
    groups=("staff", "cn=admins,dc=example"),
    roles=(),
    amr=("pwd", "otp"),
    acr="urn:loa:2",
    claims={"employee_id": "E123", "department": ("R&D", "Ops"), "empty": ""},
    auth_time=1_700_000_000,
    issued_at=1_700_000_000,
    expires_at=1_700_003_600,
)


def _session(**claims: str | tuple[str, ...]) -> Session:
    return Session(
        app="wiki",
        user="alice",
        subject="s",
        issuer="https://login.example.com",
        claims=claims,
        auth_time=0,
        issued_at=0,
        expires_at=1,
    )


class IdentityHeadersTests(SynchronousTestCase):
    def test_mapping(self) -> None:
        mapping = [
            ("X-Remote-User", "user"),
            ("X-Remote-Name", "name"),
            ("X-Remote-Groups", "groups"),
            ("X-Remote-Roles", "roles"),
            ("X-Employee-Id", "employee_id"),
            ("X-Department", "department"),
            ("X-Missing", "no_such_claim"),
            ("X-Empty", "empty"),
            ("X_Underscore", "sub"),
        ]
        self.assertEqual(
            identity_headers(mapping, SESSION),
            [
                (b"x-remote-user", b"alice"),
                (b"x-remote-name", "Alice Ångström".encode()),
                (b"x-remote-groups", b"staff,cn=admins,dc=example"),
                (b"x-remote-roles", b""),
                (b"x-employee-id", b"E123"),
                (b"x-department", b"R&D,Ops"),
                (b"x-empty", b""),
                (b"x_underscore", b"00u1abcd"),
            ],
        )

    def test_none_claim_gives_no_header(self) -> None:
        session = _session()
        self.assertEqual(identity_headers([("X-Email", "email"), ("X-Acr", "acr")], session), [])

    def test_empty_mapping(self) -> None:
        self.assertEqual(identity_headers([], SESSION), [])

    def test_unsafe_values(self) -> None:
        for bad in [
            "a\r\nX-Remote-User: admin",
            "a\nb",
            "a\rb",
            "a\x00b",
            "a\tb",
            "\x1b[31m",
            "a\x7fb",
            "a\x85b",
            "a\u2028b",
            "a\u2029b",
            "\ud800",
        ]:
            session = _session(evil=bad)
            e = self.assertRaises(
                UnsafeClaimValue, identity_headers, [("X-Ok", "user"), ("X-Evil", "evil")], session
            )
            self.assertEqual((e.header, e.claim), ("X-Evil", "evil"))
            self.assertNotIn(bad, str(e))
            self.assertEqual(
                str(e),
                "claim 'evil' cannot be sent in header 'X-Evil': its value contains a control "
                "character",
            )

    def test_unsafe_in_list(self) -> None:
        session = _session(teams=("ok", "bad\nvalue"))
        self.assertRaises(UnsafeClaimValue, identity_headers, [("X-Teams", "teams")], session)

    def test_invalid_header_name(self) -> None:
        for name in ["", "X Remote", "X-Remote:", "X-Ümlaut", "X\r\nY"]:
            self.assertRaises(ValueError, identity_headers, [(name, "user")], SESSION)

    def test_unsafe_class_is_the_categories(self) -> None:
        """
        The one character class that refuses a claim value holds exactly the
        characters of the refused Unicode categories, over all of Unicode.
        """
        for point in range(0x110000):
            char = chr(point)
            self.assertEqual(
                _UNSAFE.search(char) is not None,
                unicodedata.category(char) in _UNSAFE_CATEGORIES,
                hex(point),
            )

    @given(st.text(max_size=40) | st.lists(st.text(max_size=10), max_size=4).map(tuple))
    def test_never_forwards_unsafe(self, value: str | tuple[str, ...]) -> None:
        session = _session(claim=value)
        try:
            [(name, encoded)] = identity_headers([("X-Claim", "claim")], session)
        except UnsafeClaimValue:
            text = value if isinstance(value, str) else ",".join(value)
            self.assertTrue(
                any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in text)
                or any(0xD800 <= ord(c) <= 0xDFFF for c in text)
            )
            return
        self.assertEqual(name, b"x-claim")
        self.assertTrue(is_valid_header_value(encoded))
        self.assertNotIn(b"\r", encoded)
        self.assertNotIn(b"\n", encoded)
        self.assertNotIn("\u2028", encoded.decode("utf-8"))
        expected = value if isinstance(value, str) else ",".join(value)
        self.assertEqual(encoded.decode("utf-8"), expected)


def _variants(name: str) -> st.SearchStrategy[bytes]:
    """Case and C{-}/C{_} variants of a header name."""

    def build(flags: list[tuple[bool, bool]]) -> bytes:
        out = []
        for char, (upper, underscore) in zip(name, flags, strict=True):
            if char == "-" and underscore:
                char = "_"
            elif upper:
                char = char.upper()
            out.append(char)
        return "".join(out).encode("ascii")

    pair = st.tuples(st.booleans(), st.booleans())
    return st.lists(pair, min_size=len(name), max_size=len(name)).map(build)


PROTECTED = frozenset({"x-remote-user", "x-remote-groups", "remote-user"})
header_names = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=16
).map(lambda text: text.encode("ascii"))
header_values = st.binary(max_size=20)
spoofed_names = st.sampled_from(
    [*sorted(PROTECTED), "x-appproxy-user", "x-appproxy-jwt-assertion", "x-appproxy-"]
).flatmap(_variants)


def _is_protected(name: bytes) -> bool:
    normalised = name.decode("ascii").lower().replace("_", "-")
    return normalised in PROTECTED or normalised.startswith("x-appproxy-")


class StripSpoofedHeadersTests(SynchronousTestCase):
    def test_normalise(self) -> None:
        self.assertEqual(normalise_header_name("X_Remote-USER"), "x-remote-user")
        self.assertEqual(normalise_header_name("accept"), "accept")

    def test_example(self) -> None:
        headers: Headers = [
            (b"Accept", b"*/*"),
            (b"X-Remote-User", b"admin"),
            (b"x_remote_user", b"admin"),
            (b"X-AppProxy-Jwt-Assertion", b"forged"),
            (b"X_APPPROXY_USER", b"admin"),
            (b"X-Remote-Userx", b"kept"),
            (b"Cookie", b"a=b"),
        ]
        before = list(headers)
        self.assertEqual(
            strip_spoofed_headers(headers, PROTECTED),
            [(b"Accept", b"*/*"), (b"X-Remote-Userx", b"kept"), (b"Cookie", b"a=b")],
        )
        self.assertEqual(headers, before)

    def test_protected_normalised(self) -> None:
        self.assertEqual(
            strip_spoofed_headers([(b"x-remote-user", b"a")], frozenset({"X_Remote_User"})), []
        )

    @given(
        st.lists(
            st.one_of(
                st.tuples(header_names, header_values), st.tuples(spoofed_names, header_values)
            ),
            max_size=12,
        )
    )
    def test_property(self, headers: Headers) -> None:
        result = strip_spoofed_headers(headers, PROTECTED)
        self.assertEqual(result, [(n, v) for n, v in headers if not _is_protected(n)])
        self.assertFalse(any(_is_protected(name) for name, _ in result))


# ---------------------------------------------------------------------------
# cookies

cookie_name_chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~"
other_cookie_names = st.text(cookie_name_chars, min_size=1, max_size=12).filter(
    lambda name: not name.startswith(("__Host-appproxy-", "appproxy-"))
)
appproxy_cookie_names = st.sampled_from(["__Host-appproxy-", "appproxy-"]).flatmap(
    lambda prefix: st.text(cookie_name_chars, max_size=8).map(lambda rest: prefix + rest)
)
cookie_values = st.text(
    'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./+"', max_size=16
)


def _pairs(value: bytes) -> list[bytes]:
    return [pair.strip(b" \t") for pair in value.split(b";") if pair.strip(b" \t")]


def _cookie_names(headers: Headers) -> list[bytes]:
    return [
        pair.partition(b"=")[0].strip()
        for name, value in headers
        if name.lower() == b"cookie"
        for pair in value.split(b";")
    ]


class StripAppproxyCookiesTests(SynchronousTestCase):
    def test_example(self) -> None:
        headers: Headers = [
            (b"Accept", b"*/*"),
            (b"Cookie", b"theme=dark; __Host-appproxy-wiki=SEALED; lang=en"),
            (b"cookie", b"appproxy-flow=x"),
            (b"COOKIE", b"sid=1"),
            (b"Cookie", b" __Host-appproxy-crm=y ;  appproxy-z=1"),
        ]
        before = list(headers)
        self.assertEqual(
            strip_appproxy_cookies(headers),
            [(b"Accept", b"*/*"), (b"Cookie", b"theme=dark; lang=en"), (b"COOKIE", b"sid=1")],
        )
        self.assertEqual(headers, before)

    def test_unchanged_header_kept_byte_for_byte(self) -> None:
        headers: Headers = [(b"Cookie", b"a=1;b=2;;  c=3 ")]
        self.assertEqual(strip_appproxy_cookies(headers), headers)

    def test_case_sensitive(self) -> None:
        headers: Headers = [(b"Cookie", b"__host-appproxy-wiki=1; APPPROXY-x=2; Appproxy-y=3")]
        self.assertEqual(strip_appproxy_cookies(headers), headers)

    def test_prefix_only_at_start(self) -> None:
        headers: Headers = [(b"Cookie", b"my-appproxy-x=1; x__Host-appproxy-y=2")]
        self.assertEqual(strip_appproxy_cookies(headers), headers)

    def test_malformed_pairs_kept(self) -> None:
        self.assertEqual(
            strip_appproxy_cookies([(b"Cookie", b"appproxy-a=1; justaname; =v; b=2")]),
            [(b"Cookie", b"justaname; =v; b=2")],
        )

    def test_value_containing_prefix_kept(self) -> None:
        self.assertEqual(
            strip_appproxy_cookies([(b"Cookie", b"a=appproxy-x=1; appproxy-b=2")]),
            [(b"Cookie", b"a=appproxy-x=1")],
        )

    @given(
        st.lists(
            st.lists(
                st.tuples(
                    st.one_of(other_cookie_names, appproxy_cookie_names),
                    cookie_values,
                    st.sampled_from(["", " ", "\t"]),
                ),
                min_size=1,
                max_size=5,
            ),
            max_size=4,
        ),
        st.lists(st.tuples(header_names, header_values), max_size=3),
    )
    def test_property(
        self, cookie_headers: list[list[tuple[str, str, str]]], others: Headers
    ) -> None:
        headers: Headers = list(others)
        for pairs in cookie_headers:
            value = ";".join(f"{space}{name}={val}{space}" for name, val, space in pairs)
            headers.append((b"Cookie", value.encode("ascii")))
        result = strip_appproxy_cookies(headers)
        # No appproxy cookie survives.
        for name in _cookie_names(result):
            self.assertFalse(name.startswith((b"__Host-appproxy-", b"appproxy-")), name)
        # The other cookies survive unchanged and in order.
        expected = [
            f"{name}={val}".encode("ascii")
            for pairs in cookie_headers
            for name, val, _ in pairs
            if not name.startswith(("__Host-appproxy-", "appproxy-"))
        ]
        got = [pair for name, value in result if name == b"Cookie" for pair in _pairs(value)]
        self.assertEqual(got, expected)
        # Other headers are untouched; no empty Cookie header is left.
        self.assertEqual(
            [h for h in result if h[0] != b"Cookie"],
            [h for h in others if h[0].lower() != b"cookie"],
        )
        self.assertTrue(all(_pairs(value) for name, value in result if name == b"Cookie"))


class DropAppproxySetCookiesTests(SynchronousTestCase):
    def test_example(self) -> None:
        headers: Headers = [
            (b"Set-Cookie", b"session=1; Path=/"),
            (b"Set-Cookie", b"__Host-appproxy-wiki=stolen; Path=/; Secure"),
            (b"set-cookie", b"  appproxy-flow-1=x"),
            (b"SET-COOKIE", b"appproxy-"),
            (b"Set-Cookie", b"__host-appproxy-wiki=1"),
            (b"Set-Cookie", b"a=__Host-appproxy-wiki=1"),
            (b"Content-Type", b"text/html"),
            (b"X-Set-Cookie", b"appproxy-x=1"),
        ]
        self.assertEqual(
            drop_appproxy_set_cookies(headers),
            [
                (b"Set-Cookie", b"session=1; Path=/"),
                (b"Set-Cookie", b"__host-appproxy-wiki=1"),
                (b"Set-Cookie", b"a=__Host-appproxy-wiki=1"),
                (b"Content-Type", b"text/html"),
                (b"X-Set-Cookie", b"appproxy-x=1"),
            ],
        )

    def test_without_equals(self) -> None:
        self.assertEqual(drop_appproxy_set_cookies([(b"Set-Cookie", b"appproxy-x; Path=/")]), [])

    @given(
        st.lists(
            st.tuples(
                st.sampled_from([b"Set-Cookie", b"set-cookie", b"SET-COOKIE"]),
                st.one_of(other_cookie_names, appproxy_cookie_names),
                cookie_values,
            ),
            max_size=6,
        )
    )
    def test_property(self, cookies: list[tuple[bytes, str, str]]) -> None:
        headers: Headers = [
            (header, f"{name}={value}; Path=/".encode("ascii")) for header, name, value in cookies
        ]
        result = drop_appproxy_set_cookies(headers)
        self.assertEqual(
            result,
            [
                (header, f"{name}={value}; Path=/".encode("ascii"))
                for header, name, value in cookies
                if not name.startswith(("__Host-appproxy-", "appproxy-"))
            ],
        )


# ---------------------------------------------------------------------------
# the signed assertion

AUDIENCE = "https://wiki.example.com/"
ISSUER = "https://wiki.example.com/.appproxy"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _verify(
    token: str, jwks: bytes, audience: str = AUDIENCE, **options: object
) -> dict[str, object]:
    """What a back end does: find the key by C{kid} in the JWK Set, then verify."""
    key_set = jwt.PyJWKSet.from_json(jwks.decode("utf-8"))
    kid = jwt.get_unverified_header(token)["kid"]
    claims: dict[str, object] = jwt.decode(
        token,
        key_set[kid].key,
        algorithms=["ES256"],
        audience=audience,
        issuer=ISSUER,
        options={"require": ["exp", "iat", "nbf", "aud", "iss", "sub"]},
        **options,  # type: ignore[arg-type]
    )
    return claims


class AssertionSignerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.signer = AssertionSigner(ec.generate_private_key(ec.SECP256R1()))

    def test_verifies(self) -> None:
        now = int(time.time())
        token = self.signer.sign(SESSION, audience=AUDIENCE, issuer=ISSUER, now=now)
        claims = _verify(token, self.signer.jwks())
        jti = claims.pop("jti")
        self.assertIsInstance(jti, str)
        self.assertEqual(
            claims,
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": "00u1abcd",
                "user": "alice",
                "name": "Alice Ångström",
                "email": "alice@example.com",
                "groups": ["staff", "cn=admins,dc=example"],
                "roles": [],
                "amr": ["pwd", "otp"],
                "iat": now,
                "nbf": now,
                "exp": now + ASSERTION_LIFETIME,
            },
        )
        header = jwt.get_unverified_header(token)
        self.assertEqual((header["alg"], header["kid"]), ("ES256", self.signer.key_id))

    def test_optional_claims_omitted(self) -> None:
        now = int(time.time())
        claims = _verify(
            self.signer.sign(_session(), audience=AUDIENCE, issuer=ISSUER, now=now),
            self.signer.jwks(),
        )
        self.assertNotIn("name", claims)
        self.assertNotIn("email", claims)

    def test_unique_jti(self) -> None:
        now = int(time.time())
        tokens = [
            self.signer.sign(SESSION, audience=AUDIENCE, issuer=ISSUER, now=now) for _ in range(3)
        ]
        jtis = {_verify(token, self.signer.jwks())["jti"] for token in tokens}
        self.assertEqual(len(jtis), 3)

    def test_wrong_audience(self) -> None:
        token = self.signer.sign(SESSION, audience=AUDIENCE, issuer=ISSUER, now=int(time.time()))
        self.assertRaises(
            jwt.InvalidAudienceError,
            _verify,
            token,
            self.signer.jwks(),
            audience="https://crm.example.com/",
        )

    def test_expired(self) -> None:
        token = self.signer.sign(
            SESSION, audience=AUDIENCE, issuer=ISSUER, now=int(time.time()) - ASSERTION_LIFETIME - 5
        )
        self.assertRaises(jwt.ExpiredSignatureError, _verify, token, self.signer.jwks())

    def test_other_key_fails(self) -> None:
        other = AssertionSigner(ec.generate_private_key(ec.SECP256R1()))
        token = other.sign(SESSION, audience=AUDIENCE, issuer=ISSUER, now=int(time.time()))
        forged = jwt.encode(
            jwt.decode(token, options={"verify_signature": False}),
            other.private_key,
            algorithm="ES256",
            headers={"kid": self.signer.key_id},
        )
        self.assertRaises(jwt.InvalidSignatureError, _verify, forged, self.signer.jwks())

    def test_jwks(self) -> None:
        document = json.loads(self.signer.jwks())
        [key] = document["keys"]
        self.assertEqual(set(key), {"kty", "crv", "x", "y", "kid", "use", "alg"})
        self.assertEqual(
            (key["kty"], key["crv"], key["use"], key["alg"], key["kid"]),
            ("EC", "P-256", "sig", "ES256", self.signer.key_id),
        )
        self.assertNotIn("d", key)

    def test_key_id_is_rfc7638_thumbprint(self) -> None:
        # The private key 1: its public key is the curve's generator, whose
        # coordinates are published in SEC 2.
        signer = AssertionSigner(ec.derive_private_key(1, ec.SECP256R1()))
        x = bytes.fromhex("6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296")
        y = bytes.fromhex("4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5")
        canonical = f'{{"crv":"P-256","kty":"EC","x":"{_b64url(x)}","y":"{_b64url(y)}"}}'
        self.assertEqual(signer.key_id, _b64url(hashlib.sha256(canonical.encode()).digest()))
        [key] = json.loads(signer.jwks())["keys"]
        self.assertEqual((key["x"], key["y"]), (_b64url(x), _b64url(y)))

    def test_small_coordinates_padded(self) -> None:
        # Coordinates are always 32 bytes, even with leading zero bytes.
        for secret in range(2, 400):
            signer = AssertionSigner(ec.derive_private_key(secret, ec.SECP256R1()))
            [key] = json.loads(signer.jwks())["keys"]
            for coordinate in (key["x"], key["y"]):
                self.assertEqual(len(base64.urlsafe_b64decode(coordinate + "=")), 32)

    def test_private_key_not_in_repr(self) -> None:
        self.assertNotIn("private", repr(self.signer).lower().replace("assertionsigner", ""))

    def test_wrong_curve(self) -> None:
        self.assertRaises(ValueError, AssertionSigner, ec.generate_private_key(ec.SECP384R1()))


class LoadOrCreateAssertionKeyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "assertion-key.pem"

    def test_create_then_load(self) -> None:
        signer = load_or_create_assertion_key(self.path)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        pem = self.path.read_bytes()
        self.assertTrue(pem.startswith(b"-----BEGIN PRIVATE KEY-----"))
        self.assertEqual(os.listdir(self.dir), ["assertion-key.pem"])
        again = load_or_create_assertion_key(str(self.path))
        self.assertEqual(again.key_id, signer.key_id)
        self.assertEqual(self.path.read_bytes(), pem)
        token = signer.sign(SESSION, audience=AUDIENCE, issuer=ISSUER, now=int(time.time()))
        _verify(token, again.jwks())

    def test_existing_key_kept(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        self._write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.assertEqual(
            load_or_create_assertion_key(self.path).key_id, AssertionSigner(key).key_id
        )

    def _write(self, data: bytes, mode: int = 0o600) -> None:
        self.path.write_bytes(data)
        os.chmod(self.path, mode)

    def test_refuses_readable(self) -> None:
        load_or_create_assertion_key(self.path)
        for mode in (0o640, 0o604, 0o644):
            os.chmod(self.path, mode)
            e = self.assertRaises(ValueError, load_or_create_assertion_key, self.path)
            self.assertEqual(
                str(e),
                f"{self.path} is readable by group or others (mode {mode:04o}); "
                "it holds a private key: chmod 600 it",
            )

    def test_not_a_key(self) -> None:
        self._write(b"hello\n")
        e = self.assertRaises(ValueError, load_or_create_assertion_key, self.path)
        self.assertEqual(str(e), f"{self.path} is not an unencrypted PEM private key")

    def test_wrong_curve(self) -> None:
        key = ec.generate_private_key(ec.SECP384R1())
        self._write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        e = self.assertRaises(ValueError, load_or_create_assertion_key, self.path)
        self.assertEqual(str(e), f"{self.path} is not an EC P-256 private key")

    def test_missing_directory(self) -> None:
        self.assertRaises(OSError, load_or_create_assertion_key, self.dir / "no" / "key.pem")
