"""
Tests for L{appproxy.http.set_cookie}: the C{Domain} and C{Path} of a
C{Set-Cookie} value, from the internal application's to the external ones
(through L{appproxy.http.translate.translate_response_headers}, as the
service calls it).
"""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.http.set_cookie import CookieScope, translate_set_cookie
from appproxy.http.translate import UrlMapping
from tests.test_translate import BOTH, IPV6, MAPPINGS, NESTED, WIKI, case_variant, one, split_prefix

#: Published under another path: C{/int/} inside, C{/ext/} outside.
FILES = UrlMapping("http://files.corp.local/int/", "https://files.example.com/ext/")


def cookie(value: str, mapping: UrlMapping = FILES) -> str:
    return one(b"Set-Cookie", value.encode("latin-1"), mapping).decode("latin-1")


class PathTests(SynchronousTestCase):
    def test_trailing_slash_kept(self) -> None:
        """
        C{Path=/int/} becomes C{Path=/ext/}, not C{/ext}: C{/int/} and C{/int}
        are two paths inside, and stay two outside.
        """
        self.assertEqual(cookie("a=b; Path=/int/"), "a=b; Path=/ext/")
        self.assertEqual(cookie("a=b; Path=/int"), "a=b; Path=/ext")
        self.assertEqual(cookie("a=b; Path=/int/sub/"), "a=b; Path=/ext/sub/")
        self.assertEqual(cookie("a=b; Path=/int/sub"), "a=b; Path=/ext/sub")

    def test_internal_root(self) -> None:
        """
        C{Path=/} of an app at the internal root is the whole application:
        it becomes the external prefix without its slash, which covers the
        bare prefix the service also routes to the app.
        """
        self.assertEqual(cookie("a=b; Path=/", NESTED), "a=b; Path=/intranet")
        self.assertEqual(cookie("a=b; Path=/docs/", NESTED), "a=b; Path=/intranet/docs/")

    def test_outside_prefix_unchanged(self) -> None:
        for value in ["a=b; Path=/", "a=b; Path=/integer/", "a=b; Path=/in", "a=b; Path="]:
            self.assertEqual(cookie(value), value)


class DomainTests(SynchronousTestCase):
    def test_foreign_domain_untouched(self) -> None:
        """
        A cookie for another site keeps its Path (and Domain), wherever the
        Domain attribute is.
        """
        for value in [
            "sso=1; Domain=login.corp.local; Path=/int/",
            "sso=1; Path=/int/; Domain=.login.corp.local",
            "sso=1; Path=/int/x; Domain=other.example",
            "sso=1; Path=/int; Domain=local.corp",
            "sso=1; Path=/int/; Domain=ocal",
            "sso=1; Path=/int/; Domain=files.corp.local.evil",
        ]:
            self.assertEqual(cookie(value), value)

    def test_internal_host(self) -> None:
        """The internal host itself: Domain and Path translated."""
        self.assertEqual(
            cookie("a=b; Path=/int/; Domain=Files.Corp.Local"),
            "a=b; Path=/ext/; Domain=files.example.com",
        )
        self.assertEqual(
            cookie("a=b; domain=.files.corp.local; path=/int/x"),
            "a=b; domain=.files.example.com; path=/ext/x",
        )

    def test_parent_domain(self) -> None:
        """
        A parent domain of the internal host reaches it: the Path is
        translated; the Domain is not the internal host, and stays.
        """
        for domain in ["corp.local", ".corp.local", "LOCAL"]:
            self.assertEqual(
                cookie(f"a=b; Domain={domain}; Path=/int/"), f"a=b; Domain={domain}; Path=/ext/"
            )

    def test_address_has_no_parent(self) -> None:
        """An internal address is only reached by itself (RFC 6265 domain-match)."""
        self.assertEqual(
            cookie("a=b; Domain=2.3; Path=/wiki/", WIKI), "a=b; Domain=2.3; Path=/wiki/"
        )
        self.assertEqual(
            cookie("a=b; Domain=10.1.2.3; Path=/wiki/x", WIKI),
            "a=b; Domain=wiki.example.com; Path=/x",
        )
        self.assertEqual(
            cookie("a=b; Domain=[FD00::1]; Path=/x", IPV6), "a=b; Domain=v6.example.com; Path=/x"
        )

    def test_last_domain_counts(self) -> None:
        """
        As in a user agent, the last non-empty Domain is the cookie's.
        """
        self.assertEqual(
            cookie("a=b; Domain=other.example; Domain=files.corp.local; Path=/int/"),
            "a=b; Domain=other.example; Domain=files.example.com; Path=/ext/",
        )
        value = "a=b; Domain=files.corp.local; Domain=other.example; Path=/int/"
        self.assertEqual(cookie(value), value)
        self.assertEqual(
            cookie("a=b; Domain=files.corp.local; Domain=; Path=/int/"),
            "a=b; Domain=files.example.com; Domain=; Path=/ext/",
        )

    def test_non_ascii_domain(self) -> None:
        """
        A Domain that only lowercases to ASCII (here with the Kelvin sign,
        to a parent of the internal host) is foreign.
        """
        internal = CookieScope("app.kit.local", "/int/")
        external = CookieScope("app.example.com", "/ext/")
        self.assertEqual(
            translate_set_cookie("a=b; Domain=KIT.local; Path=/int/", internal, external),
            "a=b; Domain=KIT.local; Path=/ext/",
        )
        value = "a=b; Domain=\u212aIT.local; Path=/int/"
        self.assertEqual(translate_set_cookie(value, internal, external), value)


# --- Hypothesis ---------------------------------------------------------------

ALL_MAPPINGS = [*MAPPINGS, FILES]
mappings = st.sampled_from(ALL_MAPPINGS)
segments = st.text("abcXYZ019-._~%", min_size=1, max_size=6)
tails = st.builds(
    lambda segs, slash: "/".join(segs) + ("/" if segs and slash else ""),
    st.lists(segments, max_size=3),
    st.booleans(),
)
others = st.lists(
    st.sampled_from(["Secure", "HttpOnly", "SameSite=Lax", "Max-Age=60", "X=/int/"]), max_size=3
)


@st.composite
def internal_domains(draw: st.DrawFn, mapping: UrlMapping) -> str:
    """A Domain value for the internal host: any case, maybe a leading dot."""
    host = split_prefix(mapping.internal)[1].strip("[]")
    return draw(st.sampled_from(["", "."])) + draw(case_variant(host))


def reaches(domain: str, host: str) -> bool:
    """RFC 6265 domain-match, spelled out independently."""
    domain = domain.removeprefix(".").lower()
    is_address = host.replace(".", "").isdigit() or ":" in host
    return domain == host or (not is_address and host.endswith("." + domain))


@st.composite
def foreign_domains(draw: st.DrawFn, mapping: UrlMapping) -> str:
    """A Domain value that does not reach the internal host."""
    host = split_prefix(mapping.internal)[1].strip("[]").lower()
    labels = host.split(".")
    # Near misses (a label of the host, the host with more around it) and
    # anything else.
    near = [labels[-1] + "x", "x" + host, host + ".evil", "evil." + host]
    domain = draw(
        st.one_of(st.sampled_from(near), st.from_regex(r"\A[A-Za-z0-9-]{1,8}(\.[a-z]{1,4}){0,2}\Z"))
    )
    domain = draw(st.sampled_from(["", "."])) + domain
    assume(not reaches(domain, host))
    return domain


def set_cookie(path: str, domain: str | None, extra: list[str], domain_first: bool) -> str:
    attributes = [f"Path={path}", *extra]
    if domain is not None:
        attributes.insert(0 if domain_first else len(attributes), f"Domain={domain}")
    return "; ".join(["n=v", *attributes])


def path_of(value: str) -> str:
    [path] = [a.strip()[5:] for a in value.split(";")[1:] if a.strip().lower().startswith("path=")]
    return path


class SetCookiePropertyTests(SynchronousTestCase):
    @given(mappings, tails, others, st.booleans(), st.data())
    def test_path_under_prefix(
        self, mapping: UrlMapping, tail: str, extra: list[str], first: bool, data: st.DataObject
    ) -> None:
        """
        A Path under the internal prefix becomes the external prefix plus
        the same remainder, its trailing slash kept (the internal root alone
        aside: see L{PathTests.test_internal_root}); with no Domain or the
        internal host's.
        """
        internal_path = split_prefix(mapping.internal)[3]
        external_path = split_prefix(mapping.external)[3]
        path = internal_path + tail
        assume(not (path == "/" and internal_path != external_path))
        domain = data.draw(st.one_of(st.none(), internal_domains(mapping)))
        translated = path_of(cookie(set_cookie(path, domain, extra, first), mapping))
        self.assertEqual(translated, external_path + tail)
        self.assertEqual(translated.endswith("/"), path.endswith("/"))

    @given(mappings, tails)
    def test_path_round_trip(self, mapping: UrlMapping, tail: str) -> None:
        """Translated and translated back, a Path under the prefix is itself."""
        path = split_prefix(mapping.internal)[3] + tail
        there = path_of(cookie(set_cookie(path, None, [], True), mapping))
        assume("/" not in (path, there))
        back = path_of(cookie(set_cookie(there, None, [], True), mapping.reversed()))
        self.assertEqual(back, path)

    @given(mappings, tails, others, st.booleans(), st.data())
    def test_foreign_domain_unchanged(
        self, mapping: UrlMapping, tail: str, extra: list[str], first: bool, data: st.DataObject
    ) -> None:
        """
        A cookie whose Domain does not reach the internal host comes out as
        it went in: Path, Domain and all.
        """
        path = split_prefix(mapping.internal)[3] + tail
        value = set_cookie(path, data.draw(foreign_domains(mapping)), extra, first)
        self.assertEqual(cookie(value, mapping), value)

    @given(st.sampled_from([NESTED, BOTH, FILES]), tails, st.data())
    def test_parent_domain_path_translated(
        self, mapping: UrlMapping, tail: str, data: st.DataObject
    ) -> None:
        """
        A parent domain of the internal host name: the Path is translated,
        the Domain kept.
        """
        labels = split_prefix(mapping.internal)[1].split(".")
        parent = ".".join(labels[data.draw(st.integers(1, len(labels) - 1)) :])
        domain = data.draw(st.sampled_from(["", "."])) + data.draw(case_variant(parent))
        internal_path = split_prefix(mapping.internal)[3]
        path = internal_path + tail
        assume(path != "/")
        out = cookie(set_cookie(path, domain, [], True), mapping)
        self.assertEqual(
            out, set_cookie(split_prefix(mapping.external)[3] + tail, domain, [], True)
        )
