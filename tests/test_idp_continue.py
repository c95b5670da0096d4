"""
The built-in provider's answer to a finished sign-in form: a page that moves
the browser on by an immediate meta refresh and a link, whatever the URL.
"""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import unquote

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.idp import pages
from tests.browser import meta_refresh


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        href = dict(attributes).get("href")
        if tag == "a" and href is not None:
            self.hrefs.append(href)


def _parse(page: bytes) -> _Links:
    parser = _Links()
    parser.feed(page.decode("utf-8"))
    parser.close()
    return parser


_urls = st.builds(
    lambda query: "https://web.appproxy.test/.appproxy/callback?" + query,
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=60),
)


class ContinuePageTests(SynchronousTestCase):
    def test_plain_url(self) -> None:
        """A callback URL with a query: the refresh and the link, & escaped."""
        url = "https://web.appproxy.test/cb?code=a-b_c&state=x%2Fy&iss=https%3A%2F%2Flogin"
        page = pages.continue_page(url)
        self.assertIn(
            b'<meta http-equiv="refresh" content="0;url=https://web.appproxy.test/cb?code=a-b_c'
            b'&amp;state=x%2Fy&amp;iss=https%3A%2F%2Flogin">',
            page,
        )
        self.assertEqual(meta_refresh(page.decode()), url)
        self.assertEqual(_parse(page).hrefs, [url])
        self.assertNotIn(b"<script", page)

    @given(_urls)
    def test_any_url_is_escaped(self, url: str) -> None:
        """
        Whatever the URL holds (quotes, angle brackets, spaces, non-ASCII),
        the page has the same elements, the refresh and the link name the
        same URL, percent-encoded where needed, and nothing breaks out of
        the attribute.
        """
        plain = _parse(pages.continue_page("https://web.appproxy.test/"))
        page = pages.continue_page(url)
        parsed = _parse(page)
        self.assertEqual(parsed.tags, plain.tags)
        refresh = meta_refresh(page.decode("utf-8"))
        self.assertIsNotNone(refresh)
        assert refresh is not None
        self.assertEqual(parsed.hrefs, [refresh])
        self.assertTrue(refresh.isascii())
        for character in "\"'<> \t\n\\":
            self.assertNotIn(character, refresh)
        self.assertEqual(unquote(refresh), unquote(url))
