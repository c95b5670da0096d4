"""
The demo's stand-in for a legacy app: L{HeaderEcho} shows the request it
received, the identity headers the service added among them
(C{python -m appproxy.cli.demo echo --port N}).
"""

from __future__ import annotations

import html
import json
import sys
from typing import Any

from twisted.web import resource, server

from appproxy.cli.demo_ready import APP_MARKER

__all__ = ["HeaderEcho", "run_echo"]


class HeaderEcho(resource.Resource):
    """
    A stand-in for a legacy app: shows the request line and every header it
    received (JSON when asked for it), and redirects C{/login} to itself so
    header translation can be seen.
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        if request.path == b"/redirect":
            host = (request.getHeader(b"host") or b"").decode("latin-1")
            request.redirect(f"http://{host}/".encode("latin-1"))
            return b""
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, vs in request.requestHeaders.getAllRawHeaders()
            for v in vs
        ]
        body = request.content.read() if request.content is not None else b""
        info = {
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "headers": headers,
            "body_bytes": len(body),
        }
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        if "application/json" in accept:
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(info).encode("utf-8")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in headers
        )
        return (
            "<!doctype html><html><head><title>Legacy app</title>"
            "<style>body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:1em}"
            f"</style></head><body><h1>{APP_MARKER}</h1>"
            f"<p>{html.escape(info['method'])} {html.escape(info['uri'])}</p>"
            f"<h2>Headers received</h2><table>{rows}</table></body></html>"
        ).encode()


def run_echo(port: int) -> int:
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    site: Any = server.Site(HeaderEcho())
    try:
        reactor.listenTCP(port, site, interface="127.0.0.1")
    except CannotListenError as e:
        print(
            f"appproxy demo echo: cannot listen on 127.0.0.1:{port}: {e.socketError}",
            file=sys.stderr,
        )
        return 1
    reactor.run()
    return 0
