"""
Tests for L{appproxy.access.session} and L{appproxy.access.cookie}: the session, the
encrypted session cookie and sealed blobs.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import zlib
from pathlib import Path
from typing import Any

import attrs
from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.access import cookie as cookie_module
from appproxy.access import session as session_module
from appproxy.access.cookie import (
    CLOCK_SKEW,
    DECODED_CACHE_SIZE,
    MAX_COOKIE_BYTES,
    MAX_SEALED_CHARS,
    CookieTooLarge,
    InvalidCookie,
    Sealer,
    SessionCookieCodec,
)
from appproxy.access.keyring import KeyRing
from appproxy.access.keyring_file import load_keyring, load_or_create_keyring, save_keyring
from appproxy.access.session import Session, new_session_id, new_token, session_document

NOW = 1_700_000_000
COOKIE = "__Host-appproxy-wiki"
RING = KeyRing.create(NOW - 3600)
CODEC = SessionCookieCodec(RING)

# Text with unicode, control characters, JSON metacharacters and lone
# surrogates (which a provider's JSON may hold).
texts = st.text(
    st.characters() | st.sampled_from(["\x00", '"', "\\", "é", "€", "\U0001d11e", "\ud800"]),
    max_size=10,
)
str_tuples = st.lists(texts, max_size=3).map(tuple)
times = st.integers(min_value=-(2**31), max_value=2**40)

sessions = st.builds(
    Session,
    app=texts,
    user=texts,
    subject=texts,
    issuer=texts,
    name=st.none() | texts,
    email=st.none() | texts,
    groups=str_tuples,
    roles=str_tuples,
    amr=str_tuples,
    acr=st.none() | texts,
    claims=st.dictionaries(texts, texts | str_tuples, max_size=3),
    auth_time=times,
    issued_at=times,
    expires_at=times,
    groups_ref=st.none() | texts,
    token_ref=st.none() | texts,
    session_id=texts,
).filter(lambda s: s.issued_at < s.expires_at)

# Characters a cookie value may be changed to: its own alphabet and others.
replacements = st.sampled_from(string.ascii_letters + string.digits + "-_.=+/ !~%\x00é")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)
payloads = st.dictionaries(texts, json_values, max_size=5)


def typical(**changes: object) -> Session:
    """A session as an enterprise provider gives one, with 10 groups."""
    fields: dict[str, object] = {
        "app": "wiki",
        "user": "alice@example.com",
        "subject": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
        "issuer": "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0",
        "name": "Alice Example",
        "email": "alice@example.com",
        "groups": tuple(f"{i:08x}-3f4d-4e5a-9b8c-7d6e5f4a3b2c" for i in range(10)),
        "roles": ("Wiki.Editor",),
        "amr": ("pwd", "mfa"),
        "acr": "1",
        "claims": {"department": "Engineering", "preferred_username": "alice"},
        "auth_time": NOW - 100,
        "issued_at": NOW - 100,
        "expires_at": NOW + 8 * 3600,
        "token_ref": "t-7f3a",
        "session_id": "Xq3m0T9c2vQ1kLwY8nB5aA",
    }
    fields.update(changes)
    return Session(**fields)  # type: ignore[arg-type]


def decode(value: str, codec: SessionCookieCodec = CODEC, **overrides: object) -> Session:
    arguments: dict[str, object] = {"app": "wiki", "cookie_name": COOKIE, "now": NOW}
    arguments.update(overrides)
    return codec.decode(value, **arguments)  # type: ignore[arg-type]


def random_groups(count: int, length: int) -> tuple[str, ...]:
    """Group names that compress no better than real ones (object ids, names)."""
    rng = random.Random(7)
    alphabet = string.ascii_lowercase + string.digits
    return tuple("".join(rng.choice(alphabet) for _ in range(length)) for _ in range(count))


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SessionCookieCodecTests(SynchronousTestCase):
    def assertInvalid(self, reason: str, value: str, **overrides: Any) -> None:
        with self.assertRaises(InvalidCookie) as caught:
            decode(value, **overrides)
        self.assertEqual(caught.exception.reason, reason)

    @given(sessions)
    def test_round_trip(self, session: Session) -> None:
        """decode(encode(s)) == s for any session, and the cookie fits."""
        value = CODEC.encode(session, COOKIE)
        self.assertLessEqual(len(COOKIE) + 1 + len(value), MAX_COOKIE_BYTES)
        self.assertEqual(
            CODEC.decode(value, app=session.app, cookie_name=COOKIE, now=session.issued_at),
            session,
        )

    def test_typical_round_trip(self) -> None:
        session = typical()
        self.assertEqual(decode(CODEC.encode(session, COOKIE)), session)

    def test_format(self) -> None:
        """C{v1.<key id>.<base64url, no padding>}, cookie-safe, nonce fresh each time."""
        first = CODEC.encode(typical(), COOKIE)
        second = CODEC.encode(typical(), COOKIE)
        for value in (first, second):
            version, key_id, data = value.split(".")
            self.assertEqual(version, "v1")
            self.assertEqual(key_id, RING.current.id)
            self.assertRegex(data, r"\A[A-Za-z0-9_-]+\Z")
            self.assertGreater(len(b64decode(data)), 12 + 16)
        self.assertNotEqual(first, second)
        self.assertNotEqual(
            b64decode(first.split(".")[2])[:12], b64decode(second.split(".")[2])[:12]
        )

    def test_plaintext_not_visible(self) -> None:
        """Nothing of the session shows in the value."""
        value = CODEC.encode(typical(), COOKIE)
        raw = b64decode(value.split(".")[2])
        for secret in (b"alice", b"Engineering", b"Wiki.Editor"):
            self.assertNotIn(secret, raw)
            self.assertNotIn(secret.decode(), value)

    @given(sessions, st.data())
    def test_any_changed_character_rejected(self, session: Session, data: st.DataObject) -> None:
        value = CODEC.encode(session, COOKIE)
        index = data.draw(st.integers(0, len(value) - 1))
        replacement = data.draw(replacements)
        assume(replacement != value[index])
        changed = value[:index] + replacement + value[index + 1 :]
        with self.assertRaises(InvalidCookie):
            CODEC.decode(changed, app=session.app, cookie_name=COOKIE, now=session.issued_at)

    def test_every_position_changed_rejected(self) -> None:
        """Each character of a typical cookie, changed in turn, is refused."""
        value = CODEC.encode(typical(), COOKIE)
        for index, char in enumerate(value):
            for replacement in {"A", "B", "_", "."} - {char}:
                changed = value[:index] + replacement + value[index + 1 :]
                self.assertRaises(InvalidCookie, decode, changed)

    @given(st.data())
    def test_any_flipped_bit_rejected(self, data: st.DataObject) -> None:
        """A flipped bit anywhere in the nonce or ciphertext fails decryption."""
        value = CODEC.encode(typical(), COOKIE)
        prefix, _, encoded = value.rpartition(".")
        raw = bytearray(b64decode(encoded))
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] ^= 1 << data.draw(st.integers(0, 7))
        self.assertInvalid("decryption failed", f"{prefix}.{b64encode(bytes(raw))}")

    def test_other_spellings_rejected(self) -> None:
        """
        The same bytes spelt otherwise are refused: with padding, in the
        standard base64 alphabet, or with other unused low bits in the last
        character.
        """
        # A value whose encoding is not a multiple of 4 characters long.
        for attempt in range(100):
            session = typical(session_id=f"id-{attempt}")
            value = CODEC.encode(session, COOKIE)
            prefix, _, encoded = value.rpartition(".")
            if len(encoded) % 4 and "-" in encoded and "_" in encoded:
                break
        self.assertNotEqual(len(encoded) % 4, 0)
        raw = b64decode(encoded)
        self.assertEqual(decode(value), session)
        padded = base64.urlsafe_b64encode(raw).decode()
        self.assertInvalid("malformed", f"{prefix}.{padded}")
        self.assertInvalid("malformed", f"{prefix}.{padded}=")
        standard = base64.b64encode(raw).decode().rstrip("=")
        self.assertNotEqual(standard, encoded)
        self.assertInvalid("malformed", f"{prefix}.{standard}")
        for char, other in (("-", "+"), ("_", "/")):
            index = encoded.index(char)
            self.assertInvalid(
                "malformed", f"{prefix}.{encoded[:index]}{other}{encoded[index + 1 :]}"
            )
        alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
        last = alphabet.index(encoded[-1])
        self.assertEqual(b64decode(encoded[:-1] + alphabet[last + 1]), raw)
        self.assertInvalid("malformed", f"{prefix}.{encoded[:-1]}{alphabet[last + 1]}")

    def test_malformed(self) -> None:
        value = CODEC.encode(typical(), COOKIE)
        _, key_id, encoded = value.split(".")
        for bad in [
            "",
            "garbage",
            value + ".x",
            f"v2.{key_id}.{encoded}",
            f"v1.{key_id}.",
            f"v1.{key_id}.{encoded[:30]}",
            f"v1.{key_id}.{encoded[:-1]}",
            f"v1.{key_id}.é{encoded}",
            f"v1.{key_id}. {encoded}",
        ]:
            with self.assertRaises(InvalidCookie, msg=bad):
                decode(bad)
        self.assertInvalid("malformed", "v1.x." + "A" * MAX_COOKIE_BYTES)

    def test_wrong_app(self) -> None:
        """A cookie for app A does not decode for app B."""
        value = CODEC.encode(typical(app="wiki"), COOKIE)
        self.assertInvalid("decryption failed", value, app="crm")

    def test_wrong_cookie_name(self) -> None:
        value = CODEC.encode(typical(), COOKIE)
        self.assertInvalid("decryption failed", value, cookie_name="__Host-appproxy-crm")
        self.assertInvalid("decryption failed", value, cookie_name="appproxy-wiki")

    @given(sessions, texts, texts)
    def test_wrong_app_or_name_property(self, session: Session, app: str, name: str) -> None:
        value = CODEC.encode(session, COOKIE)
        now = session.issued_at
        if app != session.app:
            with self.assertRaises(InvalidCookie):
                CODEC.decode(value, app=app, cookie_name=COOKIE, now=now)
        if name != COOKIE:
            with self.assertRaises(InvalidCookie):
                CODEC.decode(value, app=session.app, cookie_name=name, now=now)

    def test_session_app_checked(self) -> None:
        """
        Even a genuine payload naming another app is refused (the associated
        data binds the app too; this is the second line).
        """
        ciphers = CODEC._ciphers
        document = session_document(typical(app="crm"))
        value = ciphers.seal(
            cookie_module._pack(document), cookie_module._session_aad("wiki", COOKIE)
        )
        self.assertInvalid("wrong app", value)

    def test_strict_payload(self) -> None:
        """A genuine payload of the wrong shape is refused: extra, missing, mistyped."""
        good = session_document(typical())
        aad = cookie_module._session_aad("wiki", COOKIE)

        def sealed(document: object) -> str:
            return CODEC._ciphers.seal(cookie_module._pack(document), aad)  # type: ignore[arg-type]

        self.assertEqual(decode(sealed(good)), typical())
        variants: list[object] = [
            [],
            "session",
            {**good, "extra": 1},
            {**good, "v": 2},
            {**good, "v": True},
            {**good, "x": []},
            {**good, "x": {"k": 1}},
            {**good, "x": {"k": ["a", None]}},
            {**good, "x": {"k": None}},
        ]
        for key in ("a", "u", "s", "i", "si"):
            variants += [{**good, key: None}, {**good, key: 1}, {**good, key: ["a"]}]
        for key in ("n", "e", "c", "gr", "tr"):
            variants += [{**good, key: 1}, {**good, key: ["a"]}, {**good, key: False}]
        for key in ("g", "r", "m"):
            variants += [{**good, key: "a"}, {**good, key: None}, {**good, key: ["a", 1]}]
        for key in ("at", "ia", "ea"):
            variants += [{**good, key: True}, {**good, key: 1.5}, {**good, key: "1"}]
        for key in good:
            if key != "si":
                variants.append({name: value for name, value in good.items() if name != key})
        for document in variants:
            with self.assertRaises(InvalidCookie, msg=repr(document)) as caught:
                decode(sealed(document))
            self.assertEqual(caught.exception.reason, "malformed payload")

    def test_older_cookie_without_session_id(self) -> None:
        """
        A cookie an older appproxy made, before sessions had an id, is
        refused with its own reason: it could not be revoked.
        """
        good = session_document(typical())
        del good["si"]
        aad = cookie_module._session_aad("wiki", COOKIE)
        value = CODEC._ciphers.seal(cookie_module._pack(good), aad)
        self.assertInvalid("made by an older appproxy, without a session id", value)

    def test_session_ids_are_new_and_kept(self) -> None:
        """Every session gets a new random id; its cookie carries it."""
        first, second = typical(session_id=new_session_id()), typical(session_id=new_session_id())
        self.assertNotEqual(first.session_id, second.session_id)
        self.assertEqual(len(first.session_id), 22)
        self.assertEqual(decode(CODEC.encode(first, COOKIE)).session_id, first.session_id)

    def test_not_json_payload(self) -> None:
        aad = cookie_module._session_aad("wiki", COOKIE)
        for plaintext in [b"", b"not deflate", cookie_module._pack({"v": 1}) + b"x"]:
            self.assertInvalid("malformed payload", CODEC._ciphers.seal(plaintext, aad))
        text = json.dumps(session_document(typical()), separators=(",", ":"))
        for extra in ("", " ", "{}", "x"):
            plaintext = zlib.compress((text + extra).encode(), 9, -15)
            value = CODEC._ciphers.seal(plaintext, aad)
            if extra:
                self.assertInvalid("malformed payload", value)
            else:
                self.assertEqual(decode(value), typical())

    def test_expired(self) -> None:
        value = CODEC.encode(typical(expires_at=NOW + 10), COOKIE)
        self.assertEqual(decode(value, now=NOW + 9).expires_at, NOW + 10)
        self.assertInvalid("expired", value, now=NOW + 10)
        self.assertInvalid("expired", value, now=NOW + 10_000)

    @given(sessions, st.integers(min_value=0, max_value=2**32))
    def test_expired_property(self, session: Session, late: int) -> None:
        value = CODEC.encode(session, COOKIE)
        with self.assertRaises(InvalidCookie) as caught:
            CODEC.decode(value, app=session.app, cookie_name=COOKIE, now=session.expires_at + late)
        self.assertEqual(caught.exception.reason, "expired")

    def test_issued_in_future(self) -> None:
        value = CODEC.encode(typical(issued_at=NOW + CLOCK_SKEW), COOKIE)
        self.assertEqual(decode(value).issued_at, NOW + CLOCK_SKEW)
        value = CODEC.encode(typical(issued_at=NOW + CLOCK_SKEW + 1), COOKIE)
        self.assertInvalid("issued in the future", value)

    def test_decoded_again_from_the_cache(self) -> None:
        """
        A value decoded once is not decrypted again by the same codec, but
        every check that depends on the time or on the app and name it came
        under still applies; a new codec (a new key ring) starts afresh.
        """
        codec = SessionCookieCodec(RING)
        value = codec.encode(typical(expires_at=NOW + 10), COOKIE)
        first = decode(value, codec)
        ciphers: Any = codec._ciphers
        opened: list[str] = []

        class Counting:
            def open(self, v: str, aad: bytes) -> bytes:
                opened.append(v)
                return bytes(ciphers.open(v, aad))

        object.__setattr__(codec, "_ciphers", Counting())
        self.assertIs(decode(value, codec), first)
        self.assertEqual(opened, [])
        with self.assertRaises(InvalidCookie) as caught:
            decode(value, codec, now=NOW + 10)
        self.assertEqual(caught.exception.reason, "expired")
        with self.assertRaises(InvalidCookie) as caught:
            decode(value, codec, app="crm")
        self.assertEqual(caught.exception.reason, "decryption failed")
        self.assertEqual(opened, [value])
        retired = SessionCookieCodec(KeyRing.create(NOW))
        with self.assertRaises(InvalidCookie) as caught:
            decode(value, retired)
        self.assertEqual(caught.exception.reason, "unknown or retired key")

    def test_cache_bounded(self) -> None:
        codec = SessionCookieCodec(RING)
        for _ in range(DECODED_CACHE_SIZE + 5):
            decode(codec.encode(typical(), COOKIE), codec)
        self.assertLessEqual(len(codec._decoded), DECODED_CACHE_SIZE)

    def test_unknown_key(self) -> None:
        value = CODEC.encode(typical(), COOKIE)
        other = SessionCookieCodec(KeyRing.create(NOW))
        with self.assertRaises(InvalidCookie) as caught:
            other.decode(value, app="wiki", cookie_name=COOKIE, now=NOW)
        self.assertEqual(caught.exception.reason, "unknown or retired key")

    def test_same_id_other_secret(self) -> None:
        """A key id reused with another secret does not decrypt."""
        value = CODEC.encode(typical(), COOKIE)
        impostor = KeyRing(keys=(attrs.evolve(RING.current, secret=bytes(32)),))
        with self.assertRaises(InvalidCookie) as caught:
            decode(value, SessionCookieCodec(impostor))
        self.assertEqual(caught.exception.reason, "decryption failed")

    def test_rotation(self) -> None:
        """
        After rotation old cookies still decode and new ones use the new key;
        once the old key is retired, its cookies are refused.
        """
        ring = KeyRing.create(NOW - 100)
        old_codec = SessionCookieCodec(ring)
        old_value = old_codec.encode(typical(), COOKIE)

        rotated = ring.rotated(NOW)
        codec = SessionCookieCodec(rotated)
        self.assertEqual(decode(old_value, codec), typical())
        new_value = codec.encode(typical(), COOKIE)
        self.assertEqual(new_value.split(".")[1], rotated.current.id)
        self.assertNotEqual(rotated.current.id, ring.current.id)
        self.assertEqual(decode(new_value, codec), typical())

        retired = SessionCookieCodec(rotated.retired(ring.current.id))
        with self.assertRaises(InvalidCookie) as caught:
            decode(old_value, retired)
        self.assertEqual(caught.exception.reason, "unknown or retired key")
        self.assertEqual(decode(new_value, retired), typical())

    def test_rotation_across_save_and_load(self) -> None:
        """Keys rotate without loss through the key ring file."""
        path = Path(self.mktemp())
        ring = load_or_create_keyring(path, NOW - 100)
        first = SessionCookieCodec(ring).encode(typical(), COOKIE)
        save_keyring(path, ring.rotated(NOW))
        reloaded = SessionCookieCodec(load_keyring(path))
        second = reloaded.encode(typical(), COOKIE)
        again = SessionCookieCodec(load_or_create_keyring(path, NOW + 100))
        self.assertEqual(decode(first, again), typical())
        self.assertEqual(decode(second, again), typical())
        save_keyring(path, load_keyring(path).retired(ring.current.id))
        after = SessionCookieCodec(load_keyring(path))
        self.assertRaises(InvalidCookie, decode, first, after)
        self.assertEqual(decode(second, after), typical())

    def test_too_large(self) -> None:
        """200 groups of 30 characters do not fit: the caller stores them by reference."""
        session = typical(groups=random_groups(200, 30))
        with self.assertRaises(CookieTooLarge) as caught:
            CODEC.encode(session, COOKIE)
        self.assertGreater(caught.exception.size, MAX_COOKIE_BYTES)
        self.assertEqual(caught.exception.limit, MAX_COOKIE_BYTES)
        by_reference = typical(groups=(), groups_ref="g-1234")
        self.assertEqual(decode(CODEC.encode(by_reference, COOKIE)), by_reference)

    def test_typical_fits(self) -> None:
        """A typical session (10 groups) fits, with room to spare."""
        session = typical(groups=random_groups(10, 30))
        value = CODEC.encode(session, COOKIE)
        self.assertLess(len(COOKIE) + 1 + len(value), MAX_COOKIE_BYTES // 2)
        self.assertEqual(decode(value), session)

    def test_limit_counts_name_and_value(self) -> None:
        """The limit is on C{name=value}: exactly at it is fine, one more is not."""
        session = typical()
        size = len(CODEC.encode(session, "c"))  # the length does not depend on the name
        fits = "n" * (MAX_COOKIE_BYTES - 1 - size)
        value = CODEC.encode(session, fits)
        self.assertEqual(len(fits) + 1 + len(value), MAX_COOKIE_BYTES)
        self.assertEqual(decode(value, cookie_name=fits), session)
        self.assertRaises(CookieTooLarge, CODEC.encode, session, fits + "n")

    def test_wrong_field_types_refused_on_encode(self) -> None:
        """encode refuses what could not decode to an equal session."""
        cases: list[dict[str, object]] = [
            {"groups": ("a", 1)},
            {"groups": ["a"]},
            {"auth_time": True},
            {"expires_at": float(NOW + 10)},
            {"name": 5},
            {"claims": {"k": 1}},
            {"claims": {1: "v"}},
        ]
        for changes in cases:
            self.assertRaises(ValueError, CODEC.encode, typical(**changes), COOKIE)

    def test_invalid_cookie_reason_only(self) -> None:
        """The exception names the reason, never the value."""
        value = CODEC.encode(typical(), COOKIE)
        with self.assertRaises(InvalidCookie) as caught:
            decode(value, app="crm")
        self.assertEqual(str(caught.exception), "decryption failed")
        self.assertNotIn(value.split(".")[2][:20], repr(caught.exception))


class SealerTests(SynchronousTestCase):
    sealer = Sealer(RING)

    @given(st.text(max_size=20), payloads, st.integers(min_value=NOW + 1, max_value=2**40))
    def test_round_trip(self, purpose: str, payload: dict[str, object], expires_at: int) -> None:
        token = self.sealer.seal(purpose, payload, expires_at)
        self.assertRegex(token, r"\Av1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")
        self.assertEqual(self.sealer.unseal(token, purpose=purpose, now=NOW), payload)

    def test_url_safe(self) -> None:
        token = self.sealer.seal("handoff", {"url": "https://wiki.example.com/a?b=c&d=é"}, NOW + 60)
        self.assertIsNone(re.search(r"[^A-Za-z0-9._-]", token))

    @given(st.text(max_size=20), st.text(max_size=20))
    def test_purpose_mismatch(self, purpose: str, other: str) -> None:
        assume(purpose != other)
        token = self.sealer.seal(purpose, {"a": 1}, NOW + 60)
        with self.assertRaises(InvalidCookie) as caught:
            self.sealer.unseal(token, purpose=other, now=NOW)
        self.assertEqual(caught.exception.reason, "decryption failed")

    def test_expiry(self) -> None:
        token = self.sealer.seal("flow", {"state": "x"}, NOW + 60)
        self.assertEqual(self.sealer.unseal(token, purpose="flow", now=NOW + 59), {"state": "x"})
        for now in (NOW + 60, NOW + 3600):
            with self.assertRaises(InvalidCookie) as caught:
                self.sealer.unseal(token, purpose="flow", now=now)
            self.assertEqual(caught.exception.reason, "expired")

    @given(st.data())
    def test_any_changed_character_rejected(self, data: st.DataObject) -> None:
        token = self.sealer.seal("flow", {"state": "abc", "nonce": "def"}, NOW + 60)
        index = data.draw(st.integers(0, len(token) - 1))
        replacement = data.draw(replacements)
        assume(replacement != token[index])
        changed = token[:index] + replacement + token[index + 1 :]
        self.assertRaises(InvalidCookie, self.sealer.unseal, changed, purpose="flow", now=NOW)

    def test_not_interchangeable_with_cookies(self) -> None:
        """A session cookie is no sealed token, and a sealed token no cookie."""
        value = CODEC.encode(typical(), COOKIE)
        for purpose in ("session", "wiki", COOKIE, ""):
            self.assertRaises(InvalidCookie, self.sealer.unseal, value, purpose=purpose, now=NOW)
        token = self.sealer.seal("session", session_document(typical()), NOW + 60)
        self.assertRaises(InvalidCookie, decode, token)

    def test_retired_key(self) -> None:
        ring = KeyRing.create(NOW - 100)
        token = Sealer(ring).seal("flow", {"a": 1}, NOW + 60)
        rotated = ring.rotated(NOW)
        self.assertEqual(Sealer(rotated).unseal(token, purpose="flow", now=NOW), {"a": 1})
        retired = Sealer(rotated.retired(ring.current.id))
        with self.assertRaises(InvalidCookie) as caught:
            retired.unseal(token, purpose="flow", now=NOW)
        self.assertEqual(caught.exception.reason, "unknown or retired key")

    def test_strict_payload(self) -> None:
        aad = cookie_module._sealed_aad("flow")
        for document in [
            [],
            {"v": 1, "e": NOW + 60},
            {"v": 2, "e": NOW + 60, "d": {}},
            {"v": 1, "e": "later", "d": {}},
            {"v": 1, "e": NOW + 60, "d": []},
            {"v": True, "e": NOW + 60, "d": {}},
            {"v": 1, "e": NOW + 60, "d": {}, "x": 1},
        ]:
            token = self.sealer._ciphers.seal(cookie_module._pack(document), aad)  # type: ignore[arg-type]
            with self.assertRaises(InvalidCookie) as caught:
                self.sealer.unseal(token, purpose="flow", now=NOW)
            self.assertEqual(caught.exception.reason, "malformed payload")

    def test_not_json_able(self) -> None:
        self.assertRaises(TypeError, self.sealer.seal, "flow", {"a": object()}, NOW + 60)
        self.assertRaises(ValueError, self.sealer.seal, "flow", {"a": float("nan")}, NOW + 60)
        self.assertRaises(TypeError, self.sealer.seal, "flow", {"a": 1}, float(NOW))

    def test_too_large(self) -> None:
        payload = {"blob": "".join(random_groups(1, 2 * MAX_SEALED_CHARS))}
        self.assertRaises(ValueError, self.sealer.seal, "flow", payload, NOW + 60)
        self.assertRaises(
            InvalidCookie,
            self.sealer.unseal,
            "v1.x." + "A" * MAX_SEALED_CHARS,
            purpose="flow",
            now=NOW,
        )


class NewTokenTests(SynchronousTestCase):
    """
    Ids an administrator types after a command never start with C{-}
    (C{sessions revoke --session -abc} would read it as an option).
    """

    @given(st.integers(1, 48), st.binary(min_size=48, max_size=48), st.randoms())
    def test_never_starts_with_dash(self, nbytes: int, random_bytes: bytes, rng: Any) -> None:
        """
        Whatever bytes the system's randomness gives: the id does not start
        with C{-}, has C{token_urlsafe}'s length and alphabet, and keeps all
        but its first character.
        """
        drawn = base64.urlsafe_b64encode(random_bytes[:nbytes]).rstrip(b"=").decode("ascii")
        self.patch(session_module.secrets, "token_urlsafe", lambda n: drawn)
        self.patch(session_module.secrets, "choice", rng.choice)
        token = new_token(nbytes)
        self.assertFalse(token.startswith("-"), token)
        self.assertEqual(len(token), len(drawn))
        self.assertEqual(token[1:], drawn[1:])
        self.assertRegex(token, r"\A[A-Za-z0-9_-]+\Z")

    def test_dash_replaced(self) -> None:
        """Bytes whose first 6 bits are 62 encode to a leading C{-}: replaced."""
        self.patch(session_module.secrets, "token_urlsafe", lambda n: "-9gDNiTF")
        self.assertEqual(new_token(6)[1:], "9gDNiTF")
        self.assertNotEqual(new_token(6)[0], "-")

    def test_session_ids(self) -> None:
        ids = {new_session_id() for _ in range(2000)}
        self.assertEqual(len(ids), 2000)
        self.assertFalse([i for i in ids if i.startswith("-") or len(i) != 22])
