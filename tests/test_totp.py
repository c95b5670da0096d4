"""
Tests for L{appproxy.idp.totp}.
"""

from __future__ import annotations

import base64
import urllib.parse

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.idp.totp import (
    code_at,
    decode_secret,
    generate_secret,
    provisioning_uri,
    time_step,
    totp,
    verify,
)

# RFC 6238 appendix B: the seeds (ASCII) and the 8-digit codes at each time.
_SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
_VECTORS = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


def _b32(seed: bytes) -> str:
    return base64.b32encode(seed).decode("ascii")


secrets_ = st.binary(min_size=10, max_size=64).map(_b32)
# Times from the epoch to the year 2400.
times = st.integers(min_value=0, max_value=13_500_000_000)


class RFC6238Tests(SynchronousTestCase):
    def test_vectors(self) -> None:
        for now, *codes in _VECTORS:
            for algorithm, expected in zip(("sha1", "sha256", "sha512"), codes, strict=True):
                secret = _b32(_SEEDS[algorithm])
                self.assertEqual(
                    totp(secret, now, digits=8, algorithm=algorithm), expected, (now, algorithm)
                )

    def test_six_digits_are_the_last_six(self) -> None:
        """The 6-digit code is the 8-digit one modulo 10**6 (RFC 4226 truncation)."""
        secret = _b32(_SEEDS["sha1"])
        for now, sha1_code, *_ in _VECTORS:
            self.assertEqual(totp(secret, now), sha1_code[-6:])

    def test_verify_vector(self) -> None:
        secret = _b32(_SEEDS["sha1"])
        self.assertEqual(verify(secret, "94287082", 59, digits=8), 1)
        self.assertEqual(verify(secret, "287082", 59), 1)
        self.assertIsNone(verify(secret, "287083", 59))

    def test_bad_parameters(self) -> None:
        secret = _b32(_SEEDS["sha1"])
        self.assertRaises(ValueError, code_at, secret, 1, digits=5)
        self.assertRaises(ValueError, code_at, secret, 1, algorithm="md5")
        self.assertRaises(ValueError, code_at, secret, -1)
        self.assertRaises(ValueError, verify, secret, "123456", 59, -1)


class SecretTests(SynchronousTestCase):
    def test_generate(self) -> None:
        first, second = generate_secret(), generate_secret()
        self.assertNotEqual(first, second)
        self.assertEqual(len(first), 32)
        self.assertEqual(len(decode_secret(first)), 20)
        self.assertEqual(first, first.upper())
        self.assertNotIn("=", first)

    def test_decode_forgives_case_spaces_padding(self) -> None:
        secret = _b32(b"hello world")
        expected = b"hello world"
        self.assertEqual(decode_secret(secret), expected)
        self.assertEqual(decode_secret(secret.lower()), expected)
        self.assertEqual(decode_secret(secret.rstrip("=")), expected)
        spaced = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
        self.assertEqual(decode_secret(spaced), expected)

    def test_decode_rejects(self) -> None:
        for bad in ["", "   ", "1!!!", "ÄÖÜ", "A"]:
            self.assertRaises(ValueError, decode_secret, bad)

    def test_provisioning_uri(self) -> None:
        uri = provisioning_uri("JBSWY3DPEHPK3PXP", "alice")
        self.assertEqual(
            uri, "otpauth://totp/appproxy:alice?secret=JBSWY3DPEHPK3PXP&issuer=appproxy"
        )

    def test_provisioning_uri_quotes(self) -> None:
        uri = provisioning_uri("JBSWY3DPEHPK3PXP", "a b&c@example.com")
        parts = urllib.parse.urlsplit(uri)
        self.assertEqual(urllib.parse.unquote(parts.path), "/appproxy:a b&c@example.com")
        self.assertEqual(
            urllib.parse.parse_qs(parts.query),
            {"secret": ["JBSWY3DPEHPK3PXP"], "issuer": ["appproxy"]},
        )


class VerifyPropertyTests(SynchronousTestCase):
    @given(secrets_, times)
    def test_current_code_verifies(self, secret: str, now: int) -> None:
        self.assertEqual(verify(secret, totp(secret, now), now), time_step(now))

    @given(secrets_, times, st.sampled_from([-30, 30]))
    def test_neighbour_step_verifies(self, secret: str, now: int, drift: int) -> None:
        """A code made at C{now} is accepted 30 seconds earlier or later."""
        if now + drift < 0:
            return
        self.assertEqual(verify(secret, totp(secret, now), now + drift, window=1), time_step(now))

    @given(secrets_, times, st.sampled_from([-90, 90]))
    def test_distant_step_refused(self, secret: str, now: int, drift: int) -> None:
        """
        90 seconds away the code's own step is outside the window; whatever
        matches (a 6-digit code can collide) is a step inside the window.
        """
        if now + drift < 0:
            return
        code = totp(secret, now)
        matched = verify(secret, code, now + drift, window=1)
        self.assertNotEqual(matched, time_step(now))
        if matched is not None:
            self.assertLessEqual(abs(matched - time_step(now + drift)), 1)
            self.assertEqual(code_at(secret, matched), code)

    @given(secrets_, times, st.text(max_size=8))
    def test_only_well_formed_codes(self, secret: str, now: int, code: str) -> None:
        matched = verify(secret, code, now)
        if matched is not None:
            digits = "".join(code.split())
            self.assertEqual(len(digits), 6)
            self.assertTrue(digits.isascii() and digits.isdigit())
            self.assertEqual(code_at(secret, matched), digits)

    def test_spaces_forgiven(self) -> None:
        secret = _b32(_SEEDS["sha1"])
        self.assertEqual(verify(secret, " 287 082 ", 59), 1)
        self.assertIsNone(verify(secret, "287 08", 59))

    @given(secrets_, st.integers(min_value=0, max_value=2**40))
    def test_code_shape(self, secret: str, step: int) -> None:
        code = code_at(secret, step)
        self.assertEqual(len(code), 6)
        self.assertTrue(code.isascii() and code.isdigit())
