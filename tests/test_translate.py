"""
Tests for L{appproxy.http.translate}.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.http.headers import is_valid_header_value
from appproxy.http.translate import UrlMapping, translate_response_headers, translate_url

Headers = list[tuple[bytes, bytes]]

WIKI = UrlMapping("http://10.1.2.3:8080/wiki/", "https://wiki.example.com/")
# Internal at the root, external under a path.
NESTED = UrlMapping("http://intranet.corp/", "https://apps.example.com/intranet/")
# Both under (different) paths; odd-cased, explicit default internal port.
BOTH = UrlMapping("https://App.Internal:443/a/b/", "https://ext.example.com:8443/x/")
IPV6 = UrlMapping("http://[fd00::1]:8080/", "https://v6.example.com/")
SAME_PATH = UrlMapping("http://wiki/wiki/", "https://wiki.example.com/wiki/")
MAPPINGS = [WIKI, NESTED, BOTH, IPV6, SAME_PATH]

DEFAULT_PORTS = {"http": 80, "https": 443}


def one(name: bytes, value: bytes, mapping: UrlMapping = WIKI) -> bytes:
    """Translate a single header and return its value."""
    [(out_name, out_value)] = translate_response_headers([(name, value)], mapping)
    assert out_name == name
    return out_value


class UrlMappingTests(SynchronousTestCase):
    def test_reversed(self) -> None:
        self.assertEqual(
            WIKI.reversed(), UrlMapping("https://wiki.example.com/", "http://10.1.2.3:8080/wiki/")
        )
        self.assertEqual(WIKI.reversed().reversed(), WIKI)

    def test_equality_and_hash(self) -> None:
        other = UrlMapping("http://10.1.2.3:8080/wiki/", "https://wiki.example.com/")
        self.assertEqual(other, WIKI)
        self.assertEqual(hash(other), hash(WIKI))
        self.assertNotIn("_internal_prefix", repr(WIKI))

    def test_invalid(self) -> None:
        for internal, external in [
            ("http://10.1.2.3:8080/wiki", "https://wiki.example.com/"),
            ("ftp://h/", "https://wiki.example.com/"),
            ("http://h/", "https://wiki.example.com/?q"),
            ("http://h/", "https://wiki.example.com/#f"),
            ("http://u@h/", "https://wiki.example.com/"),
            ("http:///", "https://wiki.example.com/"),
            ("/wiki/", "https://wiki.example.com/"),
            ("http://h/a b/", "https://wiki.example.com/"),
            ("http://h/a\r\n/", "https://wiki.example.com/"),
            ("http://h:x/", "https://wiki.example.com/"),
        ]:
            with self.assertRaises(ValueError, msg=(internal, external)):
                UrlMapping(internal, external)


class TranslateUrlTests(SynchronousTestCase):
    def check(self, url: str, expected: str, mapping: UrlMapping = WIKI) -> None:
        self.assertEqual(translate_url(url, mapping), expected)

    def test_under_prefix(self) -> None:
        self.check("http://10.1.2.3:8080/wiki/", "https://wiki.example.com/")
        self.check("http://10.1.2.3:8080/wiki/a/b?c=d#e", "https://wiki.example.com/a/b?c=d#e")

    def test_case_insensitive_scheme_and_host(self) -> None:
        self.check("HTTPS://APP.internal/a/b/c", "https://ext.example.com:8443/x/c", BOTH)
        self.check("Https://app.INTERNAL:443/a/b/", "https://ext.example.com:8443/x/", BOTH)

    def test_default_ports(self) -> None:
        self.check("http://intranet.corp:80/x", "https://apps.example.com/intranet/x", NESTED)
        self.check("http://intranet.corp:/x", "https://apps.example.com/intranet/x", NESTED)
        self.check("http://intranet.corp/x", "https://apps.example.com/intranet/x", NESTED)
        self.check("http://intranet.corp:8080/x", "http://intranet.corp:8080/x", NESTED)

    def test_remainder_kept_byte_for_byte(self) -> None:
        self.check(
            "http://10.1.2.3:8080/wiki/%41%2f/../x;p?q=%20&r=\u00e9#/wiki/",
            "https://wiki.example.com/%41%2f/../x;p?q=%20&r=\u00e9#/wiki/",
        )

    def test_prefix_without_trailing_slash(self) -> None:
        # External path "/": the external prefix itself.
        self.check("http://10.1.2.3:8080/wiki", "https://wiki.example.com/")
        self.check("http://10.1.2.3:8080/wiki?x=1#f", "https://wiki.example.com/?x=1#f")
        # Otherwise the external prefix without its trailing slash.
        self.check("https://app.internal/a/b", "https://ext.example.com:8443/x", BOTH)
        self.check("https://app.internal/a/b?q", "https://ext.example.com:8443/x?q", BOTH)
        # Internal path "/": an empty path.
        self.check("http://intranet.corp", "https://apps.example.com/intranet", NESTED)
        self.check("http://intranet.corp?q", "https://apps.example.com/intranet?q", NESTED)

    def test_foreign(self) -> None:
        for url in [
            "http://10.1.2.3/wiki/",
            "http://10.1.2.3:8081/wiki/",
            "https://10.1.2.3:8080/wiki/",
            "http://10.1.2.4:8080/wiki/",
            "http://10.1.2.3:8080/wikipedia/",
            "http://10.1.2.3:8080/Wiki/",
            "http://10.1.2.3:8080/",
            "http://10.1.2.3:8080",
            "http://user:pw@10.1.2.3:8080/wiki/",
            "http://10.1.2.3:8080x/wiki/",
            "ftp://10.1.2.3:8080/wiki/",
            "/wiki/page",
            "wiki/page",
            "",
            "http:/10.1.2.3:8080/wiki/",
            "http://[10.1.2.3:8080/wiki/",
        ]:
            self.check(url, url)

    def test_ipv6(self) -> None:
        self.check("http://[FD00::1]:8080/x", "https://v6.example.com/x", IPV6)
        self.check("http://[fd00::2]:8080/x", "http://[fd00::2]:8080/x", IPV6)

    def test_scheme_relative(self) -> None:
        self.check("//10.1.2.3:8080/wiki/x?y", "//wiki.example.com/x?y")
        self.check("//10.1.2.3:8080/wiki", "//wiki.example.com/")
        self.check("//10.1.2.3/wiki/x", "//10.1.2.3/wiki/x")
        self.check("//intranet.corp/x", "//apps.example.com/intranet/x", NESTED)

    def test_reversed(self) -> None:
        self.check("https://wiki.example.com/x", "http://10.1.2.3:8080/wiki/x", WIKI.reversed())
        self.check("https://wiki.example.com:443/", "http://10.1.2.3:8080/wiki/", WIKI.reversed())


class TranslateResponseHeadersTests(SynchronousTestCase):
    def test_location(self) -> None:
        self.assertEqual(
            one(b"Location", b"http://10.1.2.3:8080/wiki/Main?x=1"),
            b"https://wiki.example.com/Main?x=1",
        )
        self.assertEqual(
            one(b"content-location", b"http://10.1.2.3:8080/wiki/a"), b"https://wiki.example.com/a"
        )

    def test_location_whitespace_kept(self) -> None:
        self.assertEqual(
            one(b"LOCATION", b" http://10.1.2.3:8080/wiki/a\t"), b" https://wiki.example.com/a\t"
        )

    def test_absolute_path(self) -> None:
        self.assertEqual(one(b"Location", b"/wiki/page?q#f"), b"/page?q#f")
        self.assertEqual(one(b"Location", b"/wiki"), b"/")
        self.assertEqual(one(b"Location", b"/wiki?q"), b"/?q")
        self.assertEqual(one(b"Location", b"/other/page"), b"/other/page")
        self.assertEqual(one(b"Location", b"page"), b"page")
        self.assertEqual(one(b"Location", b"../page"), b"../page")
        self.assertEqual(one(b"Location", b"/", NESTED), b"/intranet/")
        self.assertEqual(one(b"Location", b"/a?b", NESTED), b"/intranet/a?b")
        self.assertEqual(one(b"Location", b"/a/b", BOTH), b"/x")
        self.assertEqual(one(b"Location", b"/a/b/c", BOTH), b"/x/c")

    def test_absolute_path_never_becomes_scheme_relative(self) -> None:
        for value, expected in [
            (b"/wiki//evil.example/x", b"https://wiki.example.com//evil.example/x"),
            (b"/wiki/\\evil.example/x", b"https://wiki.example.com/\\evil.example/x"),
            (b"/wiki/\t/evil.example/x", b"https://wiki.example.com/\t/evil.example/x"),
        ]:
            self.assertEqual(one(b"Location", value), expected)
            self.assertEqual(one(b"Link", b"<" + value + b">"), b"<" + expected + b">")
            self.assertEqual(one(b"Refresh", b"0;url=" + value), b"0;url=" + expected)
        self.assertEqual(
            one(b"Location", b"/intranet//x", NESTED.reversed()), b"http://intranet.corp//x"
        )

    def test_absolute_path_same_prefix(self) -> None:
        self.assertEqual(one(b"Location", b"/wiki/page", SAME_PATH), b"/wiki/page")
        self.assertEqual(one(b"Location", b"/wiki", SAME_PATH), b"/wiki")

    def test_scheme_relative_location(self) -> None:
        self.assertEqual(one(b"Location", b"//10.1.2.3:8080/wiki/a"), b"//wiki.example.com/a")
        self.assertEqual(one(b"Location", b"//evil.example/wiki/a"), b"//evil.example/wiki/a")

    def test_refresh(self) -> None:
        cases = [
            (b"5; url=http://10.1.2.3:8080/wiki/x", b"5; url=https://wiki.example.com/x"),
            (b"0;URL=http://10.1.2.3:8080/wiki/x", b"0;URL=https://wiki.example.com/x"),
            (b"0 ; Url = /wiki/x ", b"0 ; Url = /x "),
            (b"1.5, url=/wiki/x", b"1.5, url=/x"),
            (b"0; url='http://10.1.2.3:8080/wiki/x'", b"0; url='https://wiki.example.com/x'"),
            (b'0; url="http://10.1.2.3:8080/wiki/x" ', b'0; url="https://wiki.example.com/x" '),
            (b"0; url='http://10.1.2.3:8080/wiki/x", b"0; url='https://wiki.example.com/x"),
            (b"0; http://10.1.2.3:8080/wiki/x", b"0; https://wiki.example.com/x"),
            (b"5", b"5"),
            (b"5; url=http://other/wiki/x", b"5; url=http://other/wiki/x"),
            (b"soon; url=http://10.1.2.3:8080/wiki/x", b"soon; url=http://10.1.2.3:8080/wiki/x"),
        ]
        for value, expected in cases:
            self.assertEqual(one(b"Refresh", value), expected, value)

    def test_link(self) -> None:
        value = (
            b"<http://10.1.2.3:8080/wiki/style.css>; rel=preload; as=style, "
            b'</wiki/next>; rel="next"; title="a <http://10.1.2.3:8080/wiki/q> \\" <x>", '
            b"<https://cdn.example/x.js>; rel=preload"
        )
        expected = (
            b"<https://wiki.example.com/style.css>; rel=preload; as=style, "
            b'</next>; rel="next"; title="a <http://10.1.2.3:8080/wiki/q> \\" <x>", '
            b"<https://cdn.example/x.js>; rel=preload"
        )
        self.assertEqual(one(b"Link", value), expected)

    def test_link_unterminated(self) -> None:
        self.assertEqual(
            one(b"Link", b"</wiki/a>, <http://10.1.2.3:8080/wiki/b"),
            b"</a>, <http://10.1.2.3:8080/wiki/b",
        )

    def test_set_cookie_domain(self) -> None:
        cases = [
            (b"sid=1; Domain=10.1.2.3", b"sid=1; Domain=wiki.example.com"),
            (b"sid=1; domain=.10.1.2.3; Secure", b"sid=1; domain=.wiki.example.com; Secure"),
            (b"sid=1; Domain = 10.1.2.3 ", b"sid=1; Domain = wiki.example.com "),
            (b"sid=1; Domain=corp.local", b"sid=1; Domain=corp.local"),
        ]
        for value, expected in cases:
            self.assertEqual(one(b"Set-Cookie", value), expected, value)
        self.assertEqual(
            one(b"Set-Cookie", b"a=b; Domain=APP.internal", BOTH),
            b"a=b; Domain=ext.example.com",
        )
        self.assertEqual(
            one(b"Set-Cookie", b"a=b; Domain=fd00::1", IPV6), b"a=b; Domain=v6.example.com"
        )

    def test_set_cookie_path(self) -> None:
        cases = [
            (b"sid=1; Path=/wiki/", b"sid=1; Path=/"),
            (b"sid=1; Path=/wiki", b"sid=1; Path=/"),
            (b"sid=1; Path=/wiki/sub; HttpOnly", b"sid=1; Path=/sub; HttpOnly"),
            (b"sid=1; path=/other", b"sid=1; path=/other"),
            (b"sid=1; Path=/wikipedia", b"sid=1; Path=/wikipedia"),
            (b"sid=1; Path=", b"sid=1; Path="),
        ]
        for value, expected in cases:
            self.assertEqual(one(b"Set-Cookie", value), expected, value)

    def test_set_cookie_path_whole_application(self) -> None:
        """
        The internal prefix keeps its trailing slash (C{/a/b/} and C{/a/b}
        stay two paths); the internal root, the one path for the whole
        application there, gets the external prefix without its slash, so
        that it covers "/intranet" as well as "/intranet/...".  More in
        L{tests.test_set_cookie}.
        """
        self.assertEqual(one(b"Set-Cookie", b"a=b; Path=/", NESTED), b"a=b; Path=/intranet")
        self.assertEqual(one(b"Set-Cookie", b"a=b; Path=/x", NESTED), b"a=b; Path=/intranet/x")
        self.assertEqual(one(b"Set-Cookie", b"a=b; Path=/a/b/", BOTH), b"a=b; Path=/x/")
        self.assertEqual(one(b"Set-Cookie", b"a=b; Path=/a/b", BOTH), b"a=b; Path=/x")
        self.assertEqual(one(b"Set-Cookie", b"a=b; Path=/a/b/c/", BOTH), b"a=b; Path=/x/c/")
        self.assertEqual(one(b"Set-Cookie", b"a=b; Path=/wiki/", SAME_PATH), b"a=b; Path=/wiki/")

    def test_set_cookie_untouched_parts(self) -> None:
        value = (
            b"Path=/wiki/; Expires=Wed, 21 Oct 2099 07:28:00 GMT; Domain=10.1.2.3;"
            b" Path=/wiki/x; SameSite=Lax; X=http://10.1.2.3:8080/wiki/"
        )
        expected = (
            b"Path=/wiki/; Expires=Wed, 21 Oct 2099 07:28:00 GMT; Domain=wiki.example.com;"
            b" Path=/x; SameSite=Lax; X=http://10.1.2.3:8080/wiki/"
        )
        self.assertEqual(one(b"Set-Cookie", value), expected)

    def test_other_headers_untouched(self) -> None:
        headers: Headers = [
            (b"Content-Type", b"text/html"),
            (b"X-Location", b"http://10.1.2.3:8080/wiki/"),
            (b"Location", b"http://10.1.2.3:8080/wiki/x"),
            (b"Content-Security-Policy", b"default-src http://10.1.2.3:8080/wiki/"),
        ]
        before = copy.deepcopy(headers)
        self.assertEqual(
            translate_response_headers(headers, WIKI),
            [
                (b"Content-Type", b"text/html"),
                (b"X-Location", b"http://10.1.2.3:8080/wiki/"),
                (b"Location", b"https://wiki.example.com/x"),
                (b"Content-Security-Policy", b"default-src http://10.1.2.3:8080/wiki/"),
            ],
        )
        self.assertEqual(headers, before)

    def test_latin1_round_trip(self) -> None:
        self.assertEqual(
            one(b"Location", b"http://10.1.2.3:8080/wiki/caf\xe9\xff"),
            b"https://wiki.example.com/caf\xe9\xff",
        )

    def test_control_characters_keep_original(self) -> None:
        for value in [
            b"http://10.1.2.3:8080/wiki/a\x01b",
            b"http://10.1.2.3:8080/wiki/a\nLocation: http://evil/",
            b"/wiki/\x7f",
        ]:
            self.assertEqual(one(b"Location", value), value)


# --- Hypothesis ---------------------------------------------------------------

# Anything visible may follow the prefix: it is kept byte for byte.  (DEL and
# other control characters make a header value invalid: tested separately.)
remainders = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=30,
)
segments = st.text("abcXYZ019-._~%!$&'()*+,;=:@", max_size=8)
url_tails = st.builds(
    lambda segs, query, fragment: "/".join(segs) + query + fragment,
    st.lists(segments, max_size=4),
    st.one_of(st.just(""), remainders.map(lambda q: "?" + q)),
    st.one_of(st.just(""), remainders.map(lambda f: "#" + f)),
)
bare_tails = st.one_of(
    st.just(""),
    remainders.map(lambda q: "?" + q),
    remainders.map(lambda f: "#" + f),
)


def split_prefix(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a prefix URL, by simple means."""
    scheme, rest = url.split("://", 1)
    authority, slash, path = rest.partition("/")
    if authority.startswith("["):
        host, _, port = authority[1:].partition("]")
        host = f"[{host}]"
        port = port.removeprefix(":")
    else:
        host, _, port = authority.partition(":")
    return scheme, host, int(port) if port else DEFAULT_PORTS[scheme.lower()], slash + path


@st.composite
def case_variant(draw: st.DrawFn, text: str) -> str:
    mask = draw(st.integers(0, 2 ** len(text) - 1))
    return "".join(c.upper() if mask >> i & 1 else c.lower() for i, c in enumerate(text))


@st.composite
def origins(draw: st.DrawFn, mapping: UrlMapping, scheme_relative: bool = False) -> str:
    """C{scheme://host[:port]} equivalent to the mapping's internal origin."""
    scheme, host, port, _ = split_prefix(mapping.internal)
    if port == DEFAULT_PORTS[scheme.lower()]:
        port_text = draw(st.sampled_from(["", ":", f":{port}", f":0{port}"]))
    else:
        port_text = f":{port}"
    authority = draw(case_variant(host)) + port_text
    if scheme_relative:
        return "//" + authority
    return draw(case_variant(scheme)) + "://" + authority


def without_path(url: str) -> str:
    return url[: -len(split_prefix(url)[3])]


def bare(path: str) -> str:
    return path[:-1] or "/"


mappings = st.sampled_from(MAPPINGS)


class TranslatePropertyTests(SynchronousTestCase):
    @given(mappings, st.data(), url_tails)
    def test_round_trip(self, mapping: UrlMapping, data: st.DataObject, tail: str) -> None:
        """
        A URL under the internal prefix is the external prefix plus the same
        remainder; translating it back gives the internal prefix (as
        configured) plus that remainder: the original up to scheme and host
        case and default port.
        """
        origin = data.draw(origins(mapping))
        url = origin + split_prefix(mapping.internal)[3] + tail
        there = translate_url(url, mapping)
        self.assertEqual(there, mapping.external + tail)
        self.assertEqual(translate_url(there, mapping.reversed()), mapping.internal + tail)

    @given(mappings, st.data(), url_tails)
    def test_round_trip_scheme_relative(
        self, mapping: UrlMapping, data: st.DataObject, tail: str
    ) -> None:
        origin = data.draw(origins(mapping, scheme_relative=True))
        url = origin + split_prefix(mapping.internal)[3] + tail
        there = translate_url(url, mapping)
        self.assertEqual(there, mapping.external.split(":", 1)[1] + tail)
        back = translate_url(there, mapping.reversed())
        self.assertEqual(back, mapping.internal.split(":", 1)[1] + tail)

    @given(mappings, st.data(), bare_tails)
    def test_round_trip_bare_prefix(
        self, mapping: UrlMapping, data: st.DataObject, tail: str
    ) -> None:
        """
        The internal prefix without its trailing slash maps to the external
        prefix without it (or with it, if the external path is "/"); and back
        to the internal prefix without it (or with it, if either path is "/").
        """
        internal_path = split_prefix(mapping.internal)[3]
        external_path = split_prefix(mapping.external)[3]
        url = data.draw(origins(mapping)) + internal_path[:-1] + tail
        there = translate_url(url, mapping)
        self.assertEqual(there, without_path(mapping.external) + bare(external_path) + tail)
        back = translate_url(there, mapping.reversed())
        if external_path == "/":
            self.assertEqual(back, mapping.internal + tail)
        else:
            self.assertEqual(back, without_path(mapping.internal) + bare(internal_path) + tail)

    @given(mappings, st.data(), url_tails)
    def test_round_trip_absolute_path(
        self, mapping: UrlMapping, data: st.DataObject, tail: str
    ) -> None:
        internal_path = split_prefix(mapping.internal)[3]
        external_path = split_prefix(mapping.external)[3]
        # "//..." is a scheme-relative reference, not an absolute path.
        assume(not (internal_path + tail).startswith("//"))
        value = (internal_path + tail).encode("latin-1")
        there = one(b"Location", value, mapping)
        if internal_path == external_path:
            self.assertEqual(there, value)
        elif external_path == "/" and tail.startswith("/"):
            # Not "//...": that would be a scheme-relative reference.
            self.assertEqual(there, (mapping.external + tail).encode("latin-1"))
            self.assertEqual(
                translate_url(there.decode("latin-1"), mapping.reversed()),
                mapping.internal + tail,
            )
        else:
            self.assertEqual(there, (external_path + tail).encode("latin-1"))
            self.assertEqual(one(b"Location", there, mapping.reversed()), value)

    @given(mappings, st.data())
    def test_foreign_unchanged(self, mapping: UrlMapping, data: st.DataObject) -> None:
        """
        URLs on another scheme, host or port, or outside the prefix path, are
        never changed, as a URL or in a header.
        """
        scheme, host, port, path = split_prefix(mapping.internal)
        hosts = st.from_regex(r"\A[a-z0-9.-]{1,20}\Z").filter(lambda h: h != host.lower())
        ports = st.integers(1, 65535).filter(lambda p: p != port)

        def outside(candidate: str) -> bool:
            return not candidate.startswith(path) and candidate != path[:-1]

        paths = st.text("/abcwikiWIKI%.", max_size=12).map(lambda p: "/" + p).filter(outside)
        other_scheme = "https" if scheme.lower() == "http" else "http"
        kinds = ["scheme", "host", "port"] + (["path"] if path != "/" else [])
        kind = data.draw(st.sampled_from(kinds))
        if kind == "scheme":
            url = f"{other_scheme}://{host}:{port}{path}" + data.draw(url_tails)
        elif kind == "host":
            url = f"{scheme}://{data.draw(hosts)}:{port}{path}" + data.draw(url_tails)
        elif kind == "port":
            url = f"{scheme}://{host}:{data.draw(ports)}{path}" + data.draw(url_tails)
        else:
            url = f"{scheme}://{host}:{port}{data.draw(paths)}" + data.draw(bare_tails)
        self.assertEqual(translate_url(url, mapping), url)
        if kind != "scheme":
            # Scheme-relative references take the internal scheme.
            relative = "//" + url.split("://", 1)[1]
            self.assertEqual(translate_url(relative, mapping), relative)
        if kind == "path":
            absolute_path = url.split("://", 1)[1]
            absolute_path = absolute_path[absolute_path.index("/") :].encode("latin-1")
            self.assertEqual(one(b"Location", absolute_path, mapping), absolute_path)
        value = url.encode("latin-1")
        for name in [b"Location", b"Content-Location"]:
            self.assertEqual(one(name, value, mapping), value)
        self.assertEqual(one(b"Link", b"<" + value + b">", mapping), b"<" + value + b">")
        self.assertEqual(one(b"Refresh", b"0; url=" + value, mapping), b"0; url=" + value)

    @given(
        mappings,
        st.lists(
            st.tuples(
                st.one_of(
                    st.sampled_from(
                        [b"Location", b"content-location", b"REFRESH", b"Link", b"Set-Cookie"]
                    ),
                    st.text("abcxyz-", min_size=1, max_size=10).map(str.encode),
                ),
                st.one_of(
                    st.text(
                        st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=40
                    ),
                    st.sampled_from(
                        [
                            "http://10.1.2.3:8080/wiki/",
                            "0; url=/wiki",
                            "</wiki/x>",
                            "a=b; Path=/wiki/; Domain=10.1.2.3",
                            "http://intranet.corp",
                            "https://app.internal/a/b/",
                            "/",
                        ]
                    ).flatmap(
                        lambda prefix: st.text(
                            st.characters(max_codepoint=0xFF, exclude_characters="\r\n"),
                            max_size=10,
                        ).map(lambda rest: prefix + rest)
                    ),
                ).map(lambda text: text.encode("latin-1")),
            ),
            max_size=8,
        ),
    )
    def test_arbitrary_headers(self, mapping: UrlMapping, headers: Headers) -> None:
        """
        Whatever the headers, the output has the same names in the same
        order and never contains CR or LF.
        """
        before = copy.deepcopy(headers)
        result = translate_response_headers(headers, mapping)
        self.assertEqual(headers, before)
        self.assertEqual([n for n, _ in result], [n for n, _ in headers])
        for _, value in result:
            self.assertNotIn(b"\r", value)
            self.assertNotIn(b"\n", value)

    @given(mappings, st.data())
    def test_output_valid_when_input_valid(self, mapping: UrlMapping, data: st.DataObject) -> None:
        """A translated value is never less valid than the original."""
        tail = data.draw(url_tails)
        name = data.draw(st.sampled_from([b"Location", b"Link", b"Refresh", b"Set-Cookie"]))
        wrap: dict[bytes, Callable[[str], str]] = {
            b"Location": lambda u: u,
            b"Link": lambda u: f"<{u}>; rel=x",
            b"Refresh": lambda u: f"0; url={u}",
            b"Set-Cookie": lambda u: f"a=b; Path={split_prefix(u)[3] if '://' in u else u}",
        }
        url = data.draw(origins(mapping)) + split_prefix(mapping.internal)[3] + tail
        value = wrap[name](url).encode("latin-1")
        out = one(name, value, mapping)
        self.assertEqual(is_valid_header_value(out), is_valid_header_value(value))
