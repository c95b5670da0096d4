"""
Tests for L{appproxy.http.authority}: examples, and Hypothesis properties
(well-formed authorities round-trip; malformed ones are refused).
"""

from __future__ import annotations

import ipaddress
import string

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.http.authority import Authority, parse_authority

LABEL_CHARS = string.ascii_letters + string.digits + "-_"
#: Characters that may appear somewhere in a well-formed authority.
AUTHORITY_CHARS = frozenset(LABEL_CHARS + ".:[]")

labels = st.text(LABEL_CHARS, min_size=1, max_size=63)
host_names = (
    st.lists(labels, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda name: len(name) <= 253)
    .flatmap(lambda name: st.sampled_from([name, name + "."]))
)
ipv6_literals = (
    st.ip_addresses(v=6)
    .flatmap(lambda ip: st.sampled_from([ip.compressed, ip.exploded, ip.exploded.upper()]))
    .map(lambda text: f"[{text}]")
)
hosts = st.one_of(host_names, ipv6_literals)
ports = st.integers(1, 65535)
#: Well-formed authorities written plainly: no empty port, no leading zeros.
authorities = st.tuples(hosts, st.one_of(st.none(), ports)).map(
    lambda pair: pair[0] if pair[1] is None else f"{pair[0]}:{pair[1]}"
)
#: Characters that are never part of an authority.
foreign_chars = st.characters(codec="utf-8").filter(lambda char: char not in AUTHORITY_CHARS)


class ExampleTests(SynchronousTestCase):
    def test_well_formed(self) -> None:
        for text, expected in [
            ("example.com", Authority("example.com", None)),
            ("Example.COM.", Authority("example.com.", None)),
            ("example.com:", Authority("example.com", None)),
            ("example.com:0443", Authority("example.com", 443)),
            ("example.com:8443", Authority("example.com", 8443)),
            ("intranet_host:65535", Authority("intranet_host", 65535)),
            ("10.1.2.3:1", Authority("10.1.2.3", 1)),
            ("[2001:DB8:0:0::1]", Authority("[2001:db8:0:0::1]", None)),
            ("[::1]:8443", Authority("[::1]", 8443)),
        ]:
            self.assertEqual(parse_authority(text), expected, text)

    def test_malformed(self) -> None:
        for text, why in [
            ("", "no host"),
            (":443", "no host"),
            (".", "an empty label"),
            ("example..com", "an empty label"),
            (".example.com", "an empty label"),
            ("example.com..", "an empty label"),
            ("a" * 64 + ".com", "a label over 63 characters"),
            (".".join(["a" * 63] * 4) + ".com", "a name over 253 characters"),
            ("exa mple.com", "a space"),
            (" example.com", "a space"),
            ("example.com: 443", "a space"),
            ("example.com\x00", "a control character"),
            ("b\u00fccher.example", "not ASCII"),
            ("\u212aelvin.example", "not ASCII (though it lowercases to ASCII)"),
            ("example.com:\u0661", "not ASCII"),
            ("example.com:x", "a port that is not digits"),
            ("example.com:0", "port 0"),
            ("example.com:65536", "a port over 65535"),
            ("example.com:123456", "more than five digits"),
            ("example.com:443:443", "two ports"),
            ("user@example.com", "userinfo"),
            ("example.com@evil.example", "userinfo"),
            ("example.com/path", "a path"),
            ("[]", "an empty IPv6 literal"),
            ("[2001:db8::1", "no closing bracket"),
            ("[2001:db8::1]x", "something after the bracket"),
            ("[example.com]", "a name in brackets"),
            ("[fe80::1%eth0]", "a zone identifier"),
            ("[v1.fe]", "an IPvFuture literal"),
            ("2001:db8::1", "an IPv6 address without brackets"),
        ]:
            self.assertIsNone(parse_authority(text), f"{text!r}: {why}")

    def test_empty_port_after_ipv6(self) -> None:
        self.assertEqual(parse_authority("[::1]:"), Authority("[::1]", None))

    def test_canonical(self) -> None:
        for text, expected in [
            ("example.com.", "example.com"),
            ("example.com.:8443", "example.com:8443"),
            ("[2001:DB8:0:0::1]:443", "[2001:db8::1]:443"),
            ("[::ffff:10.1.2.3]", "[::ffff:a01:203]"),
        ]:
            parsed = parse_authority(text)
            assert parsed is not None
            self.assertEqual(str(parsed.canonical()), expected, text)

    def test_normalised(self) -> None:
        authority = Authority("example.com", 443)
        self.assertEqual(authority.normalised(443), "example.com")
        self.assertEqual(authority.normalised(80), "example.com:443")
        self.assertEqual(Authority("example.com", None).normalised(80), "example.com")


class PropertyTests(SynchronousTestCase):
    @given(authorities)
    def test_round_trip(self, text: str) -> None:
        """A well-formed authority parses, and is written back as it was, lowercased."""
        parsed = parse_authority(text)
        assert parsed is not None, text
        self.assertEqual(str(parsed), text.lower())
        self.assertEqual(parse_authority(str(parsed)), parsed)

    @given(hosts, ports)
    def test_parts(self, host: str, port: int) -> None:
        self.assertEqual(parse_authority(f"{host}:{port}"), Authority(host.lower(), port))
        self.assertEqual(parse_authority(host), Authority(host.lower(), None))
        self.assertEqual(parse_authority(f"{host}:"), Authority(host.lower(), None))

    @given(authorities)
    def test_canonical_is_a_fixed_point(self, text: str) -> None:
        parsed = parse_authority(text)
        assert parsed is not None
        canonical = parsed.canonical()
        self.assertEqual(parse_authority(str(canonical)), canonical)
        self.assertEqual(canonical.canonical(), canonical)
        self.assertEqual(canonical.port, parsed.port)
        self.assertFalse(canonical.host.endswith("."))

    @given(st.ip_addresses(v=6), st.one_of(st.none(), ports))
    def test_ipv6_canonical(self, address: ipaddress.IPv6Address, port: int | None) -> None:
        text = f"[{address.exploded}]" + ("" if port is None else f":{port}")
        parsed = parse_authority(text)
        assert parsed is not None
        self.assertEqual(parsed.canonical(), Authority(f"[{address.compressed}]", port))

    @given(st.data(), authorities, foreign_chars)
    def test_foreign_character_refused(self, data: st.DataObject, text: str, char: str) -> None:
        """Whitespace, C{@}, C{/}, C{%}, non-ASCII...: anywhere, refused."""
        index = data.draw(st.integers(0, len(text)))
        malformed = text[:index] + char + text[index:]
        self.assertIsNone(parse_authority(malformed), malformed)

    @given(hosts, st.one_of(st.integers(max_value=0), st.integers(min_value=65536)))
    def test_port_out_of_range_refused(self, host: str, port: int) -> None:
        self.assertIsNone(parse_authority(f"{host}:{port}"))

    @given(hosts, st.integers(6, 10), st.integers(1, 65535))
    def test_more_than_five_port_digits_refused(self, host: str, width: int, port: int) -> None:
        self.assertIsNone(parse_authority(f"{host}:{port:0{width}d}"))

    @given(st.lists(labels, min_size=2, max_size=4), st.data())
    def test_empty_label_refused(self, parts: list[str], data: st.DataObject) -> None:
        # Not at the end: one trailing dot is allowed.
        index = data.draw(st.integers(0, len(parts) - 1))
        name = ".".join([*parts[:index], "", *parts[index:]])
        self.assertIsNone(parse_authority(name), name)

    @given(st.lists(labels, max_size=3), st.text(LABEL_CHARS, min_size=64, max_size=80))
    def test_long_label_refused(self, parts: list[str], long_label: str) -> None:
        name = ".".join([*parts, long_label])
        self.assertIsNone(parse_authority(name), name)
