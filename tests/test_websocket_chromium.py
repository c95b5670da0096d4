"""
A WebSocket in a real browser: Chromium (L{tests.chromium}) signs in to an
app published by the real daemons (L{tests.websocket_deployment}), opens a
page of the app, and the page's script opens a WebSocket to the app through
appproxy and exchanges messages with it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.browser_flows import open_sign_in, sign_in_builtin, wait_until_on
from tests.chromium import ChromiumSession, run_in_chromium
from tests.websocket_app import SUBPROTOCOL
from tests.websocket_deployment import DOMAIN, PASSWORD, WebSocketDaemons, headers_of, start

#: Run in the page: open a WebSocket to the app, exchange text and 1 MiB of
#: binary, then ask the app to close with 4002; what happened.
SCRIPT = """
async ([path, protocol]) => {
  const ws = new WebSocket(`wss://${location.host}${path}`, [protocol]);
  ws.binaryType = "arraybuffer";
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error("the WebSocket failed to open"));
  });
  const next = () => new Promise((resolve, reject) => {
    ws.onmessage = (e) => resolve(e.data);
    ws.onclose = (e) => reject(new Error(`closed ${e.code} ${e.reason}`));
  });
  const out = {protocol: ws.protocol, extensions: ws.extensions};
  ws.send("hello from Chromium");
  out.text = await next();
  const big = new Uint8Array(1 << 20);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7) % 251;
  ws.send(big);
  const back = new Uint8Array(await next());
  out.binaryIntact = back.length === big.length && back.every((v, i) => v === big[i]);
  const closed = new Promise((resolve) => {
    ws.onclose = (e) => resolve([e.code, e.reason, e.wasClean]);
  });
  ws.send("close 4002 goodbye Chromium");
  out.close = await closed;
  return out;
}
"""

#: Run in the page: open a WebSocket and note its close event when it comes.
OPEN_AND_WATCH = """
([path]) => new Promise((resolve, reject) => {
  const ws = new WebSocket(`wss://${location.host}${path}`);
  window.wsClosed = null;
  ws.onopen = () => {
    window.openWebSocket = ws;
    ws.onclose = (e) => { window.wsClosed = [e.code, e.reason, Date.now()]; };
    resolve(true);
  };
  ws.onerror = () => reject(new Error("the WebSocket failed to open"));
})
"""


class ChromiumWebSocketTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_page_opens_a_websocket(self) -> Any:
        """
        Signed in, a page of the app opens a WebSocket to it: text and 1 MiB
        binary messages go both ways, the app's close code reaches the page;
        the app received the handshake with the page's origin and the user's
        identity, without appproxy's cookie.  Signing out in another tab
        closes the page's other WebSocket with 1008 within 5 seconds.
        """
        d: WebSocketDaemons = yield start(self, connections=1)

        def scenario(session: ChromiumSession) -> dict[str, Any]:
            open_sign_in(session, d.url("/page"), f"login.{DOMAIN}")
            sign_in_builtin(session, "alice", PASSWORD)
            wait_until_on(session, "back at the app's page", d.url("/page"))
            result: dict[str, Any] = session.step(
                "exchange messages over a WebSocket",
                lambda page: page.evaluate(SCRIPT, ["/echo?chromium", SUBPROTOCOL]),
            )
            session.step(
                "open another WebSocket",
                lambda page: page.evaluate(OPEN_AND_WATCH, ["/echo?until-sign-out"]),
            )

            def sign_out_in_another_tab(page: Any) -> int:
                other = page.context.new_page()
                other.goto(d.url("/.appproxy/sign-out"))
                other.get_by_text("signed out").first.wait_for()
                signed_out_at: int = page.evaluate("Date.now()")
                return signed_out_at

            signed_out_at = session.step("sign out in another tab", sign_out_in_another_tab)

            def closed(page: Any) -> list[Any]:
                page.wait_for_function("window.wsClosed !== null", timeout=10_000)
                value: list[Any] = page.evaluate("window.wsClosed")
                return value

            code, reason, closed_at = session.step("the WebSocket is closed", closed)
            result["sign_out"] = [code, reason, closed_at - signed_out_at]
            return result

        out = yield run_in_chromium(self, scenario)
        self.assertEqual(out["protocol"], SUBPROTOCOL)
        self.assertIn("permessage-deflate", out["extensions"])
        self.assertEqual(out["text"], "hello from Chromium")
        self.assertTrue(out["binaryIntact"])
        self.assertEqual(out["close"], [4002, "goodbye Chromium", True])
        seen = yield d.seen()
        [record] = [r for r in seen if r["path"] == "/echo?chromium"]
        self.assertEqual(record["status"], 101)
        headers = headers_of(record)
        self.assertEqual(headers.get("origin"), [d.origin()])
        self.assertEqual(headers.get("x-remote-user"), ["alice"])
        self.assertNotIn("cookie", headers)
        # Signing out in another tab closes the page's open WebSocket: 1008, within 5 s.
        code, reason, took_ms = out["sign_out"]
        self.assertEqual((code, reason), (1008, "session ended"))
        self.assertLess(took_ms, 5000)
