"""
The C{Cookie} request header read by name (L{appproxy.http.cookies.parse_cookies}):
the first of a name wins, malformed pairs are ignored, and a single value's
cookies, kept for the next request that sends it, are the same read-only
mapping as reading it afresh.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.http.cookies import COOKIES_KEPT, parse_cookies

names = st.text(st.sampled_from("abcXYZ_-.09"), min_size=1, max_size=6)
contents = st.text(st.sampled_from('abc=/+09 \t"%'), max_size=8)
pairs = st.tuples(names, contents).map(lambda p: f"{p[0]}={p[1]}") | st.sampled_from(
    ["justaname", "=nameless", "", " "]
)
values = st.lists(pairs, max_size=6).map(lambda ps: "; ".join(ps).encode("latin-1"))


def _expected(headers: list[bytes]) -> dict[str, str]:
    """
    The rule, spelled out: pairs in order, each without the whitespace
    around it; its name up to the first C{=}, its value the rest without
    whitespace around it; the first of each name.
    """
    cookies: dict[str, str] = {}
    for header in headers:
        for pair in header.decode("latin-1").split(";"):
            at = pair.strip().find("=")
            if at < 1:
                continue
            name = pair.strip()[:at]
            if name not in cookies:
                cookies[name] = pair.strip()[at + 1 :].strip()
    return cookies


class ParseCookiesTests(SynchronousTestCase):
    def test_example(self) -> None:
        cookies = parse_cookies([b"a=1;  b=two ; a=3; junk; =x", b"c=4; b=5"])
        self.assertEqual(dict(cookies), {"a": "1", "b": "two", "c": "4"})
        self.assertEqual(dict(parse_cookies(None)), {})
        self.assertEqual(dict(parse_cookies([])), {})

    @given(st.lists(values, min_size=1, max_size=3))
    def test_rule(self, headers: list[bytes]) -> None:
        self.assertEqual(dict(parse_cookies(headers)), _expected(headers))

    @given(values)
    def test_kept_value_read_only(self, value: bytes) -> None:
        """A single value read twice: equal cookies, which no caller can change."""
        first = parse_cookies([value])
        again = parse_cookies([value])
        self.assertEqual(dict(again), _expected([value]))
        self.assertEqual(again, first)
        with self.assertRaises(TypeError):
            again["appproxy-session"] = "forged"  # type: ignore[index]

    def test_many_values(self) -> None:
        """More values than are kept: each still read right."""
        for n in range(COOKIES_KEPT * 2):
            self.assertEqual(dict(parse_cookies([b"id=%d; x=1" % n])), {"id": str(n), "x": "1"})
