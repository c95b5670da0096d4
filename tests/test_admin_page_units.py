"""
The admin page without a browser: its data (C{/admin/v1/overview}) on the
real service in process (real TLS on loopback, as L{tests.test_admin_api}),
the page's redirects and headers, C{[admin] url}, the overview's SQL and the
page's documents (no inline script, no C{innerHTML}).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appproxy.admin.overview import LAST, read_overview
from appproxy.admin.page_assets import CSP, PAGE_HTML, PAGE_JS, SIGNED_IN_JS
from appproxy.config import ConfigError
from appproxy.config._admin import admin
from appproxy.config._table import Context, Table
from appproxy.config.model import AppConfig
from appproxy.state.schema import migrate
from tests.test_admin_api import HOST, start_admin


def _admin_table(**keys: str) -> Any:
    return admin(Table(Context(Path("service.toml")), "", {"admin": dict(keys)}, ("admin",)), {})


class ConfigTests(SynchronousTestCase):
    def test_url(self) -> None:
        got = _admin_table(listen="tcp:9443", url="https://Admin.Example.com:9443/")
        self.assertEqual(got.url, "https://admin.example.com:9443")
        self.assertIsNone(_admin_table(listen="tcp:9443").url)

    def test_bad_urls(self) -> None:
        for url in (
            "http://admin.example.com",
            "https://admin.example.com/console",
            "https://admin.example.com?x=1",
            "https://user@admin.example.com",
            "https://admin.example.com:99999",
        ):
            with self.assertRaises(ConfigError, msg=url):
                _admin_table(listen="tcp:9443", url=url)

    def test_url_without_listen(self) -> None:
        with self.assertRaises(ConfigError):
            _admin_table(url="https://admin.example.com")


class OverviewTests(SynchronousTestCase):
    def test_newest_first_and_refusals(self) -> None:
        conn = sqlite3.connect(":memory:")
        migrate(conn, ":memory:")  # type: ignore[arg-type]
        for n in range(LAST + 5):
            conn.execute(
                "INSERT INTO sign_ins (time, user, app, client_address, result, request_id)"
                " VALUES (?, ?, 'web', '127.0.0.1', ?, 'r')",
                (1000 + n, f"user{n}", "blocked" if n % 2 else "success"),
            )
        apps = [
            AppConfig(
                name="web",
                external_url="https://web.example.com/",
                internal_url="http://127.0.0.1:1/",
                connector_group="blue",
            )
        ]
        data = read_overview(conn.cursor(), apps, 2000.0, 86400.0)
        users = [e["user"] for e in data["sign_ins"]]
        self.assertEqual(users, [f"user{n}" for n in range(LAST + 4, 4, -1)])
        self.assertTrue(all(e["result"] == "blocked" for e in data["refusals"]))
        self.assertEqual(len(data["refusals"]), (LAST + 5) // 2)
        self.assertEqual(data["groups"], [{"name": "blue", "apps": ["web"], "connectors": []}])
        self.assertEqual(data["connectors"], [])
        json.dumps(data)
        conn.close()


class AssetTests(SynchronousTestCase):
    def test_no_inline_script_or_style(self) -> None:
        html = PAGE_HTML.decode()
        self.assertEqual(re.findall(r"<script(?![^>]*\ssrc=)", html), [])
        self.assertNotIn("<style", html)
        self.assertNotIn(" style=", html)
        self.assertEqual(re.findall(r"<[^>]*\son[a-z]+=", html), [])

    def test_scripts_use_text_content(self) -> None:
        for script in (PAGE_JS, SIGNED_IN_JS):
            self.assertNotIn(b"innerHTML", script)
            self.assertNotIn(b"eval(", script)
        self.assertIn(b"textContent", PAGE_JS)
        self.assertIn(b"default-src 'self'", CSP)


class PageOnServiceTests(TestCase):
    """The admin listener of the real service, in process."""

    timeout = 30

    def setUp(self) -> None:
        self.d = start_admin(self)

    @inlineCallbacks
    def test_overview_with_bearer_token(self) -> Generator[Deferred[Any], Any, None]:
        self.d.sign_ins(3, time.time())
        response, body = yield self.d.get("/admin/v1/overview")
        self.assertEqual(response.code, 200, body)
        data = json.loads(body)
        self.assertEqual([e["user"] for e in data["sign_ins"]], ["user2", "user1", "user0"])
        self.assertEqual([a["name"] for a in data["apps"]], ["web"])
        self.assertIn("connectors", data)

    @inlineCallbacks
    def test_overview_refused(self) -> Generator[Deferred[Any], Any, None]:
        response, body = yield self.d.get("/admin/v1/overview", token=None)
        self.assertEqual(response.code, 401, body)
        response, body = yield self.d.get("/admin/v1/overview", token=self.d.token(["User"]))
        self.assertEqual(response.code, 403, body)

    @inlineCallbacks
    def test_page_without_cookie(self) -> Generator[Deferred[Any], Any, None]:
        response = yield self.d.admin_client().get(
            f"https://{HOST}:{self.d.admin_port}/admin/", allow_redirects=False
        )
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders("location"), ["/admin/sign-in"])
        csp = response.headers.getRawHeaders("content-security-policy")
        self.assertEqual(csp, [CSP.decode()])
        response, body = yield self.d.get("/admin/page.js", token=None)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, PAGE_JS)

    @inlineCallbacks
    def test_sign_in_needs_url(self) -> Generator[Deferred[Any], Any, None]:
        """Without C{[admin] url} the page cannot sign in, and says so."""
        response, body = yield self.d.get("/admin/sign-in", token=None)
        self.assertEqual(response.code, 503)
        self.assertIn(b"[admin] url", body)

    @inlineCallbacks
    def test_forged_cookie(self) -> Generator[Deferred[Any], Any, None]:
        headers: dict[bytes | str, bytes | str] = {"Cookie": "appproxy-admin=v1.x.AAAA"}
        response = yield self.d.admin_client().get(
            f"https://{HOST}:{self.d.admin_port}/admin/",
            headers=headers,
            allow_redirects=False,
        )
        self.assertEqual(response.code, 302)
