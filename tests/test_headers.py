"""
Tests for L{appproxy.http.headers}.
"""

from __future__ import annotations

import copy
import os
import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.http import headers
from appproxy.http.headers import (
    FORWARDING_HEADERS,
    HOP_BY_HOP,
    is_valid_header_value,
    new_request_id,
    prepare_request_headers,
    strip_header_names,
)

Headers = list[tuple[bytes, bytes]]

KWARGS = {
    "client_address": "203.0.113.9",
    "external_host": "wiki.example.com",
    "request_id": "0123456789abcdef0123456789abcdef",
    "internal_netloc": "10.1.2.3:8080",
}

APPENDED: Headers = [
    (b"x-forwarded-for", b"203.0.113.9"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"wiki.example.com"),
    (b"x-request-id", b"0123456789abcdef0123456789abcdef"),
]


def prepare(headers: Headers) -> Headers:
    return prepare_request_headers(headers, **KWARGS)


def _variants(name: bytes) -> st.SearchStrategy[bytes]:
    """Case and C{-}/C{_} variants of a header name (two bit masks)."""

    def build(masks: tuple[int, int]) -> bytes:
        upper, underscore = masks
        out = bytearray()
        for index, char in enumerate(name):
            c = bytes([char])
            if c == b"-" and underscore >> index & 1:
                c = b"_"
            elif upper >> index & 1:
                c = c.upper()
            out += c
        return bytes(out)

    limit = 2 ** len(name) - 1
    return st.tuples(st.integers(0, limit), st.integers(0, limit)).map(build)


header_names = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=20
).map(lambda text: text.encode("ascii"))
header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
    | st.just("\t"),
    max_size=30,
).map(lambda text: text.encode("latin-1"))

REMOVED_ALWAYS = HOP_BY_HOP | {b"host"}


def _is_special(name: bytes) -> bool:
    lower = name.lower()
    normalised = lower.replace(b"_", b"-")
    return (
        lower in REMOVED_ALWAYS
        or normalised in FORWARDING_HEADERS
        or normalised.startswith(b"x-appproxy-")
    )


plain_names = header_names.filter(lambda n: not _is_special(n))
hop_names = st.sampled_from(sorted(HOP_BY_HOP)).flatmap(
    lambda n: st.sampled_from([n, n.upper(), n.title()])
)
reserved_names = st.sampled_from(
    [b"x-appproxy-user", b"x-appproxy-", b"x-appproxy-groups-x"]
).flatmap(_variants)
forwarding_names = st.sampled_from(sorted(FORWARDING_HEADERS)).flatmap(_variants)


class PrepareRequestHeadersTests(SynchronousTestCase):
    def test_example(self) -> None:
        headers: Headers = [
            (b"Host", b"wiki.example.com"),
            (b"User-Agent", b"curl/8"),
            (b"Accept", b"*/*"),
            (b"Cookie", b"a=b"),
        ]
        self.assertEqual(
            prepare(headers),
            [(b"user-agent", b"curl/8"), (b"accept", b"*/*"), (b"cookie", b"a=b"), *APPENDED],
        )

    def test_names_lowercased_values_untouched(self) -> None:
        self.assertEqual(
            prepare([(b"X-Custom-Thing", b"MiXeD Value")])[0], (b"x-custom-thing", b"MiXeD Value")
        )

    def test_hop_by_hop_removed(self) -> None:
        headers: Headers = [(name.upper(), b"x") for name in sorted(HOP_BY_HOP)]
        headers.append((b"Accept", b"*/*"))
        self.assertEqual(prepare(headers), [(b"accept", b"*/*"), *APPENDED])

    def test_connection_named_removed(self) -> None:
        headers: Headers = [
            (b"Connection", b" Keep-Alive ,X-Secret,,\tx-other "),
            (b"X-Secret", b"1"),
            (b"x-other", b"2"),
            (b"X-Kept", b"3"),
        ]
        self.assertEqual(prepare(headers), [(b"x-kept", b"3"), *APPENDED])

    def test_several_connection_headers(self) -> None:
        headers: Headers = [
            (b"connection", b"a"),
            (b"Connection", b"B"),
            (b"a", b"1"),
            (b"b", b"2"),
            (b"c", b"3"),
        ]
        self.assertEqual(prepare(headers), [(b"c", b"3"), *APPENDED])

    def test_forwarding_headers_replaced(self) -> None:
        headers: Headers = [
            (b"X-Forwarded-For", b"1.2.3.4"),
            (b"X-Forwarded-Proto", b"http"),
            (b"X-Forwarded-Host", b"evil"),
            (b"X-Forwarded-Port", b"80"),
            (b"Forwarded", b"for=1.2.3.4"),
            (b"X-Real-IP", b"1.2.3.4"),
            (b"X-Request-ID", b"mine"),
            (b"X_Forwarded_For", b"5.6.7.8"),
        ]
        self.assertEqual(prepare(headers), APPENDED)

    def test_reserved_prefix_removed(self) -> None:
        headers: Headers = [
            (b"X-AppProxy-User", b"admin"),
            (b"X_AppProxy_User", b"admin"),
            (b"x-appproxy_groups", b"admins"),
            (b"X-AppProxyUser", b"kept: not the reserved prefix"),
        ]
        self.assertEqual(
            prepare(headers), [(b"x-appproxyuser", b"kept: not the reserved prefix"), *APPENDED]
        )

    def test_pseudo_headers_removed(self) -> None:
        headers: Headers = [(b":authority", b"x"), (b":path", b"/"), (b"a", b"b")]
        self.assertEqual(prepare(headers), [(b"a", b"b"), *APPENDED])

    def test_input_not_mutated(self) -> None:
        headers: Headers = [(b"Connection", b"x"), (b"x", b"1"), (b"Host", b"h")]
        before = copy.deepcopy(headers)
        prepare(headers)
        self.assertEqual(headers, before)

    def test_invalid_arguments(self) -> None:
        for key, bad in [
            ("client_address", ""),
            ("client_address", "1.2.3.4\r\nX: y"),
            ("external_host", "h\u00e9"),
            ("request_id", "a\x00"),
            ("internal_netloc", ""),
        ]:
            kwargs = dict(KWARGS, **{key: bad})
            with self.assertRaises(ValueError):
                prepare_request_headers([], **kwargs)

    @given(
        st.lists(
            st.one_of(
                st.tuples(plain_names, header_values),
                st.tuples(hop_names, header_values),
                st.tuples(reserved_names, header_values),
                st.tuples(forwarding_names, header_values),
                st.tuples(st.sampled_from([b"Host", b"host", b"HOST"]), header_values),
            ),
            max_size=12,
        ),
        st.lists(plain_names, max_size=3),
    )
    def test_properties(self, headers: Headers, connection_names: list[bytes]) -> None:
        """
        No hop-by-hop, Connection-named, host, forwarding or reserved header
        survives; exactly one x-forwarded-for, equal to the client address;
        every other header is kept, in order, with its name lowercased.
        """
        if connection_names:
            headers = [(b"Connection", b", ".join(connection_names)), *headers]
        # Every Connection field names hop-by-hop fields, the generated ones
        # among the headers too (a hop-by-hop name drawn as "connection").
        named = {
            token.strip(b" \t").lower()
            for name, value in headers
            if name.lower() == b"connection"
            for token in value.split(b",")
        } - {b""}
        result = prepare(headers)
        names = [name for name, _ in result]
        for name in names:
            self.assertEqual(name, name.lower())
            self.assertNotIn(name, HOP_BY_HOP)
            self.assertNotIn(name, named)
            self.assertFalse(re.match(rb"x[-_]appproxy[-_]", name, re.IGNORECASE), name)
            self.assertNotEqual(name, b"host")
        self.assertEqual(
            [value for name, value in result if name == b"x-forwarded-for"], [b"203.0.113.9"]
        )
        expected = [
            (name.lower(), value)
            for name, value in headers
            if not _is_special(name) and name.lower() not in named
        ]
        self.assertEqual(result, expected + APPENDED)


class IsValidHeaderValueTests(SynchronousTestCase):
    def test_examples(self) -> None:
        self.assertTrue(is_valid_header_value(b""))
        self.assertTrue(is_valid_header_value(b"text/html; q=0.9"))
        self.assertTrue(is_valid_header_value(b"a\tb"))
        self.assertTrue(is_valid_header_value("caf\u00e9".encode("latin-1")))
        for bad in [b"\x00", b"a\rb", b"a\nb", b"\x1b[0m", b"\x7f", b"\x01"]:
            self.assertFalse(is_valid_header_value(bad), bad)

    @given(st.binary(max_size=20))
    def test_property(self, value: bytes) -> None:
        expected = all(b == 9 or 0x20 <= b != 0x7F for b in value)
        self.assertEqual(is_valid_header_value(value), expected)


class StripHeaderNamesTests(SynchronousTestCase):
    def test_example(self) -> None:
        headers: Headers = [
            (b"X-Remote-User", b"a"),
            (b"Accept", b"*/*"),
            (b"x_remote_user", b"b"),
            (b"X-REMOTE_USER", b"c"),
            (b"X-Remote-Users", b"kept"),
        ]
        self.assertEqual(
            strip_header_names(headers, ["x_Remote-user"]),
            [(b"Accept", b"*/*"), (b"X-Remote-Users", b"kept")],
        )

    def test_empty_names(self) -> None:
        headers: Headers = [(b"A", b"1")]
        self.assertEqual(strip_header_names(headers, []), headers)
        self.assertIsNot(strip_header_names(headers, []), headers)

    def test_generator_names(self) -> None:
        headers: Headers = [(b"A", b"1"), (b"B", b"2")]
        self.assertEqual(strip_header_names(headers, (n for n in ["a"])), [(b"B", b"2")])

    @given(
        st.lists(
            st.one_of(
                st.tuples(plain_names, header_values).map(lambda h: (True, h)),
                st.tuples(reserved_names, header_values).map(lambda h: (False, h)),
            ),
            max_size=10,
        )
    )
    def test_property(self, tagged: list[tuple[bool, tuple[bytes, bytes]]]) -> None:
        headers = [header for _, header in tagged]
        result = strip_header_names(
            headers, ["X-AppProxy-User", "x_appproxy_", "X-APPPROXY-GROUPS-X"]
        )
        self.assertEqual(result, [header for keep, header in tagged if keep])
        for name, _ in result:
            self.assertNotIn(
                name.lower().replace(b"_", b"-"),
                {b"x-appproxy-user", b"x-appproxy-", b"x-appproxy-groups-x"},
            )


class NewRequestIdTests(SynchronousTestCase):
    def test_format(self) -> None:
        # More than one batch of the kernel's random bytes (256 IDs each).
        ids = {new_request_id() for _ in range(600)}
        self.assertEqual(len(ids), 600)
        for request_id in ids:
            self.assertRegex(request_id, r"\A[0-9a-f]{32}\Z")

    def test_fresh_bytes_after_fork(self) -> None:
        """A forked child does not use the bytes its parent drew (and will use)."""
        new_request_id()
        parent_next = headers._random[headers._random_at : headers._random_at + 16].hex()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.write(write, new_request_id().encode("ascii"))
            finally:
                os._exit(0)
        os.close(write)
        child = os.read(read, 64).decode("ascii")
        os.close(read)
        os.waitpid(pid, 0)
        self.assertRegex(child, r"\A[0-9a-f]{32}\Z")
        self.assertNotEqual(child, parent_next)
        self.assertEqual(new_request_id(), parent_next)
