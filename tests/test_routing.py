"""
Tests for L{appproxy.frontend.routing}.
"""

from __future__ import annotations

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.frontend.routing import (
    _HOST_CACHE_SIZE,
    Router,
    has_dot_segments,
    internal_path,
    normalise_host,
)
from appproxy.http.paths import segment_is_dot


@attrs.frozen
class App:
    name: str
    external_host: str
    external_path: str


ROOT = App("root", "example.com", "/")
WIKI = App("wiki", "example.com", "/wiki/")
WIKI_ADMIN = App("wiki-admin", "example.com", "/wiki/admin/")
OTHER_PORT = App("other-port", "example.com:8443", "/")
V6 = App("v6", "[2001:db8::1]", "/app/")
APPS = [ROOT, WIKI, WIKI_ADMIN, OTHER_PORT, V6]


class NormaliseHostTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for host, expected in [
            ("example.com", "example.com"),
            ("Example.COM", "example.com"),
            ("example.com.", "example.com"),
            ("example.com:443", "example.com"),
            ("example.com.:443", "example.com"),
            ("example.com:", "example.com"),
            ("example.com:0443", "example.com"),
            ("example.com:8443", "example.com:8443"),
            (" example.com\t", "example.com"),
            ("10.1.2.3", "10.1.2.3"),
            ("intranet_host", "intranet_host"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("[2001:DB8::1]", "[2001:db8::1]"),
            ("[2001:db8:0:0::1]:443", "[2001:db8::1]"),
            ("[::1]:8443", "[::1]:8443"),
        ]:
            self.assertEqual(normalise_host(host), expected, host)

    def test_default_port(self) -> None:
        self.assertEqual(normalise_host("example.com:80", default_port=80), "example.com")
        self.assertEqual(normalise_host("example.com:443", default_port=80), "example.com:443")
        self.assertEqual(normalise_host("example.com", default_port=80), "example.com")

    def test_malformed(self) -> None:
        for host in [
            "",
            ".",
            "example..com",
            ".example.com",
            "example.com..",
            "exa mple.com",
            "example.com:x",
            "example.com:0",
            "example.com:65536",
            "example.com:123456",
            "example.com:443:443",
            "user@example.com",
            "example.com/path",
            "b\u00fccher.example",
            "example.com\x00",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "[example.com]",
            "[fe80::1%eth0]",
            "2001:db8::1",
            "a" * 64 + ".com",
            ".".join(["a" * 63] * 4) + ".com",
            "example.com:\u0661",
        ]:
            self.assertIsNone(normalise_host(host), host)


class InternalPathTests(SynchronousTestCase):
    def test_examples(self) -> None:
        self.assertEqual(internal_path("/", "/wiki/", "/page?x=1"), "/wiki/page?x=1")
        self.assertEqual(internal_path("/wiki/", "/", "/wiki/page"), "/page")
        self.assertEqual(internal_path("/wiki/", "/w/", "/wiki"), "/w/")
        self.assertEqual(internal_path("/wiki/", "/w/", "/wiki?q=/wiki/"), "/w/?q=/wiki/")
        self.assertEqual(internal_path("/wiki/", "/w/", "/wiki/a/b?"), "/w/a/b?")
        self.assertEqual(internal_path("/", "/", "/x?y"), "/x?y")

    def test_not_under_prefix(self) -> None:
        for request_path in ["/wikipedia", "/other", "/?/wiki/"]:
            with self.assertRaises(ValueError):
                internal_path("/wiki/", "/", request_path)

    @given(
        st.sampled_from(["/", "/a/", "/a/b/"]),
        st.sampled_from(["/", "/w/", "/x/y/"]),
        st.text(max_size=20),
        st.one_of(st.just(""), st.text(max_size=10).map(lambda q: "?" + q)),
    )
    def test_property(self, external: str, internal: str, rest: str, query: str) -> None:
        """The remainder and the query string are carried over unchanged."""
        self.assertEqual(
            internal_path(external, internal, external + rest + query), internal + rest + query
        )


class HasDotSegmentsTests(SynchronousTestCase):
    def test_examples(self) -> None:
        for path in ["/..", "/../x", "/a/./b", "/a/%2e%2E/b", "/a/.%2e", "/a\\..\\b", "/a/..?x"]:
            self.assertTrue(has_dot_segments(path), path)
        # Encoded separators, backslashes and path parameters too (Tomcat,
        # Spring and IIS decode them before resolving the path).
        for path in [
            "/a%2f..",
            "/a/..%2fb",
            "/a/%2e%2e%2fb",
            "/a/..%5cb",
            "/a/..;/b",
            "/%252e%252e",
        ]:
            self.assertTrue(has_dot_segments(path), path)
        for path in ["/", "/a/b", "/a/.b", "/a/..b/", "/a/...", "/a?x=/../", "/100%25", "/a;b/c"]:
            self.assertFalse(has_dot_segments(path), path)

    @given(st.text(alphabet="/\\.%2eEfF5cC;a?", max_size=16))
    def test_whole_path_shortcut(self, path: str) -> None:
        """
        The shortcut for paths without a dot or an escape gives the verdict
        of the segment-by-segment check.
        """
        segments = path.partition("?")[0].split("/")
        self.assertEqual(has_dot_segments(path), any(segment_is_dot(s) for s in segments))


class RouterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.router = Router(APPS)

    def test_longest_prefix(self) -> None:
        route = self.router.route
        self.assertIs(route("example.com", "/"), ROOT)
        self.assertIs(route("example.com", "/page"), ROOT)
        self.assertIs(route("example.com", "/wiki/"), WIKI)
        self.assertIs(route("example.com", "/wiki/page"), WIKI)
        self.assertIs(route("example.com", "/wiki/admin/"), WIKI_ADMIN)
        self.assertIs(route("example.com", "/wiki/admin/users?x=1"), WIKI_ADMIN)
        self.assertIs(route("example.com", "/wikipedia"), ROOT)
        self.assertIs(route("example.com", "/wiki/administrator"), WIKI)

    def test_hosts_remembered_and_bounded(self) -> None:
        """
        Host values are normalised once and remembered as sent (bytes and
        text apart, malformed ones too), at most a bounded number of them.
        """
        route = self.router.route
        for _ in range(2):
            self.assertIs(route(b"EXAMPLE.com.", "/wiki/"), WIKI)
            self.assertIs(route("example.com:443", "/"), ROOT)
            self.assertIsNone(route(b"exa mple.com", "/"))
            self.assertTrue(self.router.publishes_host(b"example.com:8443"))
        for n in range(_HOST_CACHE_SIZE + 10):
            self.assertIsNone(route(f"h{n}.example.org".encode(), "/"))
        self.assertLessEqual(len(self.router._hosts), _HOST_CACHE_SIZE)
        self.assertIs(route(b"example.com", "/wiki/admin/"), WIKI_ADMIN)

    def test_prefix_without_trailing_slash(self) -> None:
        self.assertIs(self.router.route("example.com", "/wiki"), WIKI)
        self.assertIs(self.router.route("example.com", "/wiki?x"), WIKI)
        self.assertIs(self.router.route("example.com", "/wiki/admin"), WIKI_ADMIN)
        self.assertIsNone(self.router.route("[2001:db8::1]", "/ap"))
        self.assertIs(self.router.route("[2001:db8::1]", "/app"), V6)

    def test_query_ignored(self) -> None:
        self.assertIs(self.router.route("example.com", "/?/wiki/"), ROOT)
        self.assertIs(self.router.route("example.com", "/x?/wiki/admin/"), ROOT)

    def test_host_normalised(self) -> None:
        route = self.router.route
        self.assertIs(route("EXAMPLE.com.", "/wiki/"), WIKI)
        self.assertIs(route("example.com:443", "/wiki/"), WIKI)
        self.assertIs(route(b"Example.Com:443", b"/wiki/"), WIKI)
        self.assertIs(route("example.com:8443", "/wiki/"), OTHER_PORT)
        self.assertIs(route("[2001:DB8:0::1]:443", "/app/x"), V6)

    def test_no_match(self) -> None:
        route = self.router.route
        self.assertIsNone(route(None, "/"))
        self.assertIsNone(route("other.example", "/"))
        self.assertIsNone(route("example.com:8080", "/"))
        self.assertIsNone(route("exa mple.com", "/"))
        self.assertIsNone(route(b"example.com\xff", b"/"))
        self.assertIsNone(route("[2001:db8::1]", "/"))
        self.assertIsNone(route("example.com", "*"))

    def test_bytes_path(self) -> None:
        self.assertIs(self.router.route(b"example.com", b"/wiki/caf\xc3\xa9"), WIKI)

    def test_invalid_apps(self) -> None:
        for apps in [
            [App("a", "bad host", "/")],
            [App("a", "example.com", "/x")],
            [App("a", "example.com", "x/")],
            [App("a", "example.com", "/"), App("b", "EXAMPLE.com:443", "/")],
        ]:
            with self.assertRaises(ValueError):
                Router(apps)

    def test_empty(self) -> None:
        self.assertIsNone(Router[App]([]).route("example.com", "/"))
        self.assertFalse(Router[App]([]).publishes_host("example.com"))

    def test_publishes_host(self) -> None:
        """
        A host is published whatever its apps' paths: C{[2001:db8::1]} has
        only C{/app/}, which C{/robots.txt} is not under.
        """
        publishes = self.router.publishes_host
        published: list[str | bytes] = [
            "example.com",
            b"EXAMPLE.com.:443",
            "example.com:8443",
            "[2001:DB8::1]",
        ]
        for host in published:
            self.assertTrue(publishes(host), host)
        self.assertIsNone(self.router.route("[2001:db8::1]", "/robots.txt"))
        others: list[str | bytes | None] = [
            None,
            "other.example",
            "example.com:8080",
            "exa mple.com",
            b"\xff",
            "",
        ]
        for other in others:
            self.assertFalse(publishes(other), other)


hosts = st.sampled_from(["a.example", "b.example", "b.example:8443"])
prefixes = st.lists(st.sampled_from(["a", "b", "ab"]), max_size=3).map(
    lambda parts: "/" + "".join(p + "/" for p in parts)
)
apps_lists = st.lists(st.tuples(hosts, prefixes), unique=True, max_size=8).map(
    lambda pairs: [App(f"app{i}", host, path) for i, (host, path) in enumerate(pairs)]
)
request_paths = st.lists(st.sampled_from(["a", "b", "ab", "", "c"]), max_size=4).map(
    lambda parts: "/" + "/".join(parts)
)


class RouterPropertyTests(SynchronousTestCase):
    @given(apps_lists, hosts, request_paths)
    def test_published_host(self, apps: list[App], host: str, path: str) -> None:
        """
        A host is published exactly when an app is on it; every request the
        router routes is for a published host.
        """
        router = Router(apps)
        published = router.publishes_host(host)
        self.assertEqual(published, any(app.external_host == host for app in apps))
        if router.route(host, path) is not None:
            self.assertTrue(published)

    @given(
        apps_lists,
        hosts.flatmap(
            lambda h: st.sampled_from([h, h.upper(), h + ".", h if ":" in h else h + ":443"])
        ),
        request_paths,
        st.one_of(st.just(""), st.sampled_from(["?", "?a/b/", "?x=/ab/"])),
    )
    def test_longest_matching_prefix(
        self, apps: list[App], host: str, path: str, query: str
    ) -> None:
        """
        The chosen application is on the request's host and has the longest
        external path that the request path is under; None if there is none.
        """
        chosen = Router(apps).route(host, path + query)
        normalised = normalise_host(host)
        matching = [
            app
            for app in apps
            if app.external_host == normalised
            and (path.startswith(app.external_path) or path == app.external_path[:-1])
        ]
        if not matching:
            self.assertIsNone(chosen)
        else:
            assert chosen is not None
            self.assertIn(chosen, matching)
            self.assertEqual(
                len(chosen.external_path), max(len(app.external_path) for app in matching)
            )

    @given(
        st.one_of(
            st.from_regex(r"\A[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){0,3}(:[0-9]{1,4})?\Z"),
            st.sampled_from(["example.com", "EXAMPLE.com:443", "example.com:8443"]),
        ),
        request_paths,
    )
    def test_unknown_hosts(self, host: str, path: str) -> None:
        """Hosts that are not configured are never routed."""
        configured = {"example.com", "example.com:8443"}
        self.assertEqual(
            Router(APPS).route(host, path) is None, normalise_host(host) not in configured
        )
