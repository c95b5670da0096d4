"""
The identity module's per-request shortcuts (L{appproxy.identity.headers})
give what the plain definitions give: headers made once per session object,
spoofed fields compared as bytes, Cookie fields without appproxy's mark
kept whole.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.access.session import Session
from appproxy.http.headers import RESERVED_PREFIX
from appproxy.identity.headers import (
    APPPROXY_COOKIE_PREFIXES,
    UnsafeClaimValue,
    identity_headers,
    normalise_header_name,
    strip_appproxy_cookies,
    strip_spoofed_headers,
)

MAPPING = (("X-Remote-User", "user"), ("X-Remote-Groups", "groups"), ("X-Dept", "dept"))


def session(**changes: object) -> Session:
    fields: dict[str, object] = {
        "app": "web",
        "user": "alice",
        "subject": "s1",
        "issuer": "https://idp.example",
        "groups": ("ops", "dev"),
        "claims": {"dept": "R&D"},
        "auth_time": 1,
        "issued_at": 1,
        "expires_at": 10**10,
    }
    fields.update(changes)
    return Session(**fields)  # type: ignore[arg-type]


def reference_spoofed(
    headers: list[tuple[bytes, bytes]], protected: frozenset[str]
) -> list[tuple[bytes, bytes]]:
    names = {normalise_header_name(n) for n in protected}
    prefix = RESERVED_PREFIX.decode("ascii")
    return [
        (name, value)
        for name, value in headers
        if (n := name.lower().replace(b"_", b"-").decode("latin-1")) not in names
        and not n.startswith(prefix)
    ]


def reference_cookies(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    result = []
    for name, value in headers:
        if name.lower() != b"cookie":
            result.append((name, value))
            continue
        pairs = value.split(b";")
        kept = [
            p
            for p in pairs
            if not (
                b"=" in p
                and p.partition(b"=")[0].strip(b" \t").startswith(APPPROXY_COOKIE_PREFIXES)
            )
        ]
        if len(kept) == len(pairs):
            result.append((name, value))
            continue
        remaining = [p.strip(b" \t") for p in kept]
        remaining = [p for p in remaining if p]
        if remaining:
            result.append((name, b"; ".join(remaining)))
    return result


_names = st.one_of(
    st.sampled_from(
        [b"X-Remote-User", b"x_remote_user", b"X-AppProxy-Foo", b"x_appproxy_bar", b"Cookie"]
    ),
    st.binary(min_size=1, max_size=12),
)
_cookie_values = st.lists(
    st.one_of(
        st.sampled_from([b"appproxy-web=1", b" __Host-appproxy-x=2", b"a=b", b"appproxy-", b""]),
        st.binary(max_size=10),
    ),
    max_size=5,
).map(b";".join)


class IdentityShortcutTests(SynchronousTestCase):
    def test_headers_once_per_session(self) -> None:
        """The same session gives equal headers, in a new list each time."""
        s = session()
        first = identity_headers(MAPPING, s)
        first.append((b"x-appproxy-jwt-assertion", b"t"))
        second = identity_headers(MAPPING, s)
        self.assertEqual(
            second,
            [(b"x-remote-user", b"alice"), (b"x-remote-groups", b"ops,dev"), (b"x-dept", b"R&D")],
        )
        self.assertIsNot(first, second)

    def test_other_session_other_headers(self) -> None:
        """An equal-looking but different session object is looked at anew."""
        identity_headers(MAPPING, session())
        self.assertEqual(
            identity_headers(MAPPING, session(user="bob"))[0], (b"x-remote-user", b"bob")
        )

    def test_unsafe_value_refused_every_time(self) -> None:
        """A claim that cannot be a header value is refused each time, never cached."""
        s = session(claims={"dept": "a\r\nb"})
        for _ in range(2):
            self.assertRaises(UnsafeClaimValue, identity_headers, MAPPING, s)

    @settings(max_examples=300)
    @given(
        st.lists(st.tuples(_names, st.binary(max_size=5)), max_size=8),
        st.frozensets(st.sampled_from(["X-Remote-User", "X_Dept", "x-é", "X-Ω"]), max_size=3),
    )
    def test_spoofed_as_defined(
        self, headers: list[tuple[bytes, bytes]], protected: frozenset[str]
    ) -> None:
        self.assertEqual(
            strip_spoofed_headers(headers, protected), reference_spoofed(headers, protected)
        )
        self.assertEqual(
            strip_spoofed_headers(headers, list(protected)), reference_spoofed(headers, protected)
        )

    @settings(max_examples=300)
    @given(st.lists(st.tuples(st.sampled_from([b"Cookie", b"cookie", b"Accept"]), _cookie_values)))
    def test_cookies_as_defined(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.assertEqual(strip_appproxy_cookies(headers), reference_cookies(headers))
