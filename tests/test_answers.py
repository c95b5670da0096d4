"""
Tests for the error pages of L{appproxy.frontend.answers} about the way to
the app: they name the app in the user's terms and never carry anything
internal (the connector's detail does not even reach them).
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.config import AppConfig
from appproxy.frontend.answers import (
    app_label,
    connection_lost_page,
    error_answer,
    no_connector_page,
    upstream_error_page,
)

KINDS = ["backend-refused", "backend-reset", "backend-tls", "timeout", "backend-error"]
INTERNAL = "http://10.20.30.40:8080/"

names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)


def app(name: str) -> AppConfig:
    return AppConfig(
        name=name,
        external_url=f"https://{name}.example.com/",
        internal_url=INTERNAL,
        connector_group="secret-group",
    )


class UpstreamPageTests(SynchronousTestCase):
    @given(name=names, kind=st.one_of(st.sampled_from(KINDS), st.text(max_size=30)))
    def test_names_the_app_only(self, name: str, kind: str) -> None:
        """
        Whatever the kind, the page (HTML and JSON) names the app by its name
        and external URL, and shows neither its internal URL nor its group.
        """
        published = app(name)
        title, detail, source = upstream_error_page(kind, published)
        self.assertIn(app_label(published), detail)
        for accept in (b"text/html", b"application/json"):
            answer = error_answer(
                502, title, detail, source=source, request_id="r1", now=0, accept=accept
            )
            body = answer.body.decode()
            if accept == b"application/json":
                body = json.loads(body)["detail"]
            self.assertIn(f"https://{name}.example.com/", body)
            self.assertNotIn("10.20.30.40", body)
            self.assertNotIn("8080", body)
            self.assertNotIn("secret-group", body)
            self.assertNotIn("{app}", body)

    def test_known_kinds_have_their_own_titles(self) -> None:
        titles = {kind: upstream_error_page(kind, app("wiki"))[0] for kind in KINDS}
        self.assertEqual(titles["timeout"], "Application timed out")
        self.assertEqual(titles["backend-refused"], "Application unreachable")
        self.assertEqual(upstream_error_page("whatever", app("wiki"))[0], "Bad gateway")

    def test_bad_request_is_the_service(self) -> None:
        title, detail, source = upstream_error_page("bad-request", app("wiki"))
        self.assertEqual((title, source), ("Bad request", "appproxy service"))
        self.assertIn("wiki (https://wiki.example.com/)", detail)

    def test_tunnel_pages(self) -> None:
        for page in (no_connector_page, connection_lost_page):
            _title, detail, source = page(app("wiki"))
            self.assertEqual(source, "connector")
            self.assertIn("wiki (https://wiki.example.com/)", detail)
            self.assertNotIn("secret-group", detail)

    def test_no_app(self) -> None:
        self.assertIn("The application", upstream_error_page("timeout", None)[1])
