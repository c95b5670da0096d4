"""
Tests for L{appproxy.access.redirects}.
"""

from __future__ import annotations

import string
from urllib.parse import urlsplit

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.access.redirects import MAX_TARGET_LENGTH, safe_redirect_target

ROOT = "https://wiki.example.com/"
NESTED = "https://apps.example.com/intranet/"
PORTED = "https://apps.example.com:8443/x/"
IPV6 = "https://[fd00::1]:8443/v6/"
APPS = [ROOT, NESTED, PORTED, IPV6]


def _whatwg_host(url: str) -> str | None:
    """
    The host a browser would see: WHATWG URL parsing drops tabs and
    newlines and treats C{\\} as C{/} in special URLs.
    """
    cleaned = url.replace("\t", "").replace("\n", "").replace("\r", "").replace("\\", "/")
    return urlsplit(cleaned.strip()).hostname


def _origin_and_prefix(app: str) -> tuple[str, str]:
    parts = urlsplit(app)
    return f"{parts.scheme}://{parts.netloc}", parts.path


class SafeRedirectTargetExamplesTests(SynchronousTestCase):
    def check(self, target: str, expected: str, app: str = NESTED) -> None:
        self.assertEqual(safe_redirect_target(target, app), expected, target)

    def test_paths_inside_the_prefix(self) -> None:
        self.check("/intranet/", NESTED)
        self.check("/intranet/page", NESTED + "page")
        self.check("/intranet/a/b?c=d&e=%2F", NESTED + "a/b?c=d&e=%2F")
        self.check("/intranet/a?", NESTED + "a?")
        self.check("/", ROOT, ROOT)
        self.check("/anything/at/all?x=1", ROOT + "anything/at/all?x=1", ROOT)

    def test_absolute_urls_on_the_apps_host(self) -> None:
        self.check("https://apps.example.com/intranet/p?q", NESTED + "p?q")
        self.check("HTTPS://APPS.EXAMPLE.COM:443/intranet/p", NESTED + "p")
        self.check("https://apps.example.com:8443/x/y", PORTED + "y", PORTED)
        self.check("https://[FD00::1]:8443/v6/y", IPV6 + "y", IPV6)
        self.check("https://wiki.example.com", ROOT, ROOT)
        self.check("https://wiki.example.com?q=1", ROOT + "?q=1", ROOT)

    def test_fragment_is_dropped(self) -> None:
        self.check("/intranet/page#section", NESTED + "page")
        self.check("/intranet/page?q=1#section", NESTED + "page?q=1")
        self.check("https://apps.example.com/intranet/p#f", NESTED + "p")

    def test_outside_the_prefix(self) -> None:
        for target in [
            "/",
            "/intranet",
            "/intranetX/",
            "/other/intranet/",
            "/INTRANET/",
            "/in%74ranet/",
            "https://apps.example.com/",
            "https://apps.example.com/other",
        ]:
            self.check(target, NESTED)

    def test_other_hosts_and_ports(self) -> None:
        for target in [
            "https://evil.example/intranet/",
            "https://apps.example.com.evil.example/intranet/",
            "https://apps.example.com:444/intranet/",
            "https://apps.example.com:/intranet/",
            "https://apps.example.com:0443/intranet/",
            "https://apps.example.com./intranet/",
            "https://apps%2eexample.com/intranet/",
            "//apps.example.com/intranet/",
            "//evil.example/intranet/",
            "///evil.example/intranet/",
            "https:///apps.example.com/intranet/",
            "https:/apps.example.com/intranet/",
            "https:apps.example.com/intranet/",
        ]:
            self.check(target, NESTED)

    def test_other_schemes(self) -> None:
        for target in [
            "http://apps.example.com/intranet/",
            "javascript:alert(1)",
            "JavaScript://apps.example.com/intranet/%0aalert(1)",
            "data:text/html,<script>",
            "ftp://apps.example.com/intranet/",
            "intranet/page",
            "page",
            "?q=1",
            "#frag",
            "",
        ]:
            self.check(target, NESTED)

    def test_backslashes(self) -> None:
        for target in [
            "/\\evil.example/",
            "\\\\evil.example/intranet/",
            "/intranet\\..\\..\\",
            "https://apps.example.com\\@evil.example/intranet/",
            "https:\\\\evil.example/intranet/",
            "/intranet/page?q=\\",
        ]:
            self.check(target, NESTED)

    def test_control_characters_and_whitespace(self) -> None:
        for char in [
            "\t",
            "\n",
            "\r",
            "\x00",
            "\x0b",
            "\x0c",
            "\x1f",
            "\x7f",
            " ",
            "\x85",
            "\u2028",
        ]:
            for target in [
                f"/intranet/{char}page",
                f"/{char}/evil.example/intranet/",
                f"https://apps.example.com/intranet/?q={char}",
                f"/intranet/page#{char}",
                f"{char}/intranet/",
            ]:
                self.check(target, NESTED)

    def test_userinfo(self) -> None:
        for target in [
            "https://user@apps.example.com/intranet/",
            "https://apps.example.com@evil.example/intranet/",
            "https://user:pass@apps.example.com/intranet/",
        ]:
            self.check(target, NESTED)
        # "@" in the path is only a path character.
        self.check("/intranet/user@host", NESTED + "user@host")

    def test_dot_segments(self) -> None:
        for target in [
            "/intranet/../admin",
            "/intranet/./page",
            "/intranet/a/..",
            "/intranet/%2e%2e/admin",
            "/intranet/%2E./admin",
            "/intranet/.%2e",
            "/intranet/%2e",
            "/intranet/%252e%252e/admin",
            "/intranet/..;x/admin",
            "/intranet/..%2fadmin",
            "/intranet/..%5cadmin",
            "/intranet/a%2f..%2f..%2fadmin",
            "https://apps.example.com/intranet/../admin",
        ]:
            self.check(target, NESTED)
        # Dots that are not whole segments are ordinary.
        self.check("/intranet/a..b/.c/d.", NESTED + "a..b/.c/d.")

    def test_encoded_slashes_at_the_start(self) -> None:
        for target in ["/%2fevil.example", "/%2F%2Fevil.example/", "/%5cevil.example", "//x"]:
            self.check(target, ROOT, ROOT)
        # Further into the path an encoded slash is the app's business.
        self.check("/a%2Fb", ROOT + "a%2Fb", ROOT)

    def test_malformed_escapes(self) -> None:
        for target in ["/intranet/%", "/intranet/%zz", "/intranet/?q=%4"]:
            self.check(target, NESTED)

    def test_non_ascii(self) -> None:
        for target in ["/intranet/caf\u00e9", "https://apps.example.\u0441om/intranet/"]:
            self.check(target, NESTED)
        self.check("/intranet/caf%C3%A9", NESTED + "caf%C3%A9")

    def test_unusual_printable_characters_are_encoded(self) -> None:
        self.check('/intranet/a"b<c>?q={x}|`^[]', NESTED + "a%22b%3Cc%3E?q=%7Bx%7D%7C%60%5E%5B%5D")

    def test_length_cap(self) -> None:
        path = "/intranet/" + "a" * (MAX_TARGET_LENGTH - len("/intranet/"))
        self.check(path, NESTED + path[len("/intranet/") :])
        self.check(path + "a", NESTED)

    def test_app_url_must_be_normalised(self) -> None:
        for app in [
            "http://h/",
            "https://h",
            "https://H/",
            "https://h:443/",
            "https://h/p",
            "https://h/p/?q",
            "https://u@h/",
            "https://h/ p/",
        ]:
            with self.assertRaises(ValueError, msg=app):
                safe_redirect_target("/", app)


# Pieces of targets, chosen to combine into the classic open-redirect tricks.
_PIECES = [
    "/",
    "//",
    "\\",
    "%2f",
    "%5C",
    "%2e",
    "%252e",
    ".",
    "..",
    ";",
    "@",
    ":",
    "?",
    "#",
    "%",
    "\t",
    "\n",
    "\r",
    " ",
    "\x00",
    "\u00e9",
    "https:",
    "http:",
    "javascript:",
    "evil.example",
    "apps.example.com",
    "wiki.example.com",
    "[fd00::1]",
    ":8443",
    ":443",
    "intranet",
    "x",
    "v6",
    "a",
    "=",
    "&",
]

_targets = st.lists(st.sampled_from(_PIECES), max_size=12).map("".join) | st.text(max_size=40)
_apps = st.sampled_from(APPS)


def _pchar_segment() -> st.SearchStrategy[str]:
    alphabet = string.ascii_letters + string.digits + "-_~!$&'()*+,=:@"
    return st.text(alphabet, min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


class SafeRedirectTargetPropertyTests(SynchronousTestCase):
    @given(_targets, _apps)
    def test_always_inside_the_app(self, target: str, app: str) -> None:
        """
        Whatever the target, the result starts with the app's URL, holds no
        control characters or whitespace, and every parser agrees on its host.
        """
        result = safe_redirect_target(target, app)
        self.assertTrue(result.startswith(app), (target, result))
        self.assertTrue(result.isascii())
        self.assertFalse(any(char <= " " or char == "\x7f" for char in result), result)
        self.assertNotIn("\\", result)
        app_host = urlsplit(app).hostname
        self.assertEqual(urlsplit(result).hostname, app_host)
        self.assertEqual(_whatwg_host(result), app_host)
        self.assertEqual(urlsplit(result).port, urlsplit(app).port)
        self.assertNotIn("#", result)

    @given(_targets, _apps)
    def test_result_is_a_fixed_point(self, target: str, app: str) -> None:
        """A result is itself a safe target that maps to itself."""
        result = safe_redirect_target(target, app)
        self.assertEqual(safe_redirect_target(result, app), result)

    @given(
        _apps,
        st.lists(_pchar_segment(), max_size=5),
        st.booleans(),
        st.none() | st.text(string.ascii_letters + string.digits + "=&%2F-._~", max_size=20),
    )
    def test_safe_paths_are_made_absolute(
        self, app: str, segments: list[str], trailing_slash: bool, query: str | None
    ) -> None:
        origin, prefix = _origin_and_prefix(app)
        path = prefix + "/".join(segments) + ("/" if trailing_slash and segments else "")
        assume(not path.startswith("//"))
        # Only well-formed escapes in the query.
        if query is not None:
            query = query.replace("%", "%25")
        suffix = "" if query is None else "?" + query
        self.assertEqual(safe_redirect_target(path + suffix, app), origin + path + suffix)
        self.assertEqual(safe_redirect_target(origin + path + suffix, app), origin + path + suffix)
        self.assertEqual(
            safe_redirect_target(origin.upper() + path + suffix, app), origin + path + suffix
        )

    @given(_apps, st.text(max_size=30), st.sampled_from(["..", ".", "%2e%2e", "%2E", "..;p"]))
    def test_dot_segments_anywhere_land_on_the_root(self, app: str, before: str, dots: str) -> None:
        _, prefix = _origin_and_prefix(app)
        before = "".join(char for char in before if char.isalnum())
        for target in [
            f"{prefix}{dots}/x",
            f"{prefix}{before}/{dots}",
            f"{prefix}{before}/{dots}/",
        ]:
            self.assertEqual(safe_redirect_target(target, app), app, target)

    @given(_targets, _apps, st.sampled_from(["\t", "\n", "\r", " ", "\\", "\x00", "\x7f"]))
    def test_forbidden_characters_anywhere(self, target: str, app: str, char: str) -> None:
        _, prefix = _origin_and_prefix(app)
        for position in range(0, len(prefix + target) + 1, 3):
            candidate = (prefix + target)[:position] + char + (prefix + target)[position:]
            self.assertEqual(safe_redirect_target(candidate, app), app, candidate)
