"""
C{appproxy demo}: the whole path on one machine.

Creates a state directory (once), then runs the service and a connector as
real C{twistd} daemons and a small "legacy" app that echoes the headers it
receives, and prints the URL to open and a curl line that works.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.web import resource, server

DEMO_DOMAIN = "appproxy.localhost"
DEMO_APP = "echo"
PUBLIC_PORT = 8443
TUNNEL_PORT = 8444
ECHO_PORT = 8080


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
            "</style></head><body><h1>Hello from the internal app</h1>"
            f"<p>{html.escape(info['method'])} {html.escape(info['uri'])}</p>"
            f"<h2>Headers received</h2><table>{rows}</table></body></html>"
        ).encode()


def run_echo(port: int) -> None:
    from twisted.internet import reactor

    site: Any = server.Site(HeaderEcho())
    reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.run()


def _twistd() -> list[str]:
    """
    twistd from this interpreter's environment (C{python -m twisted} is the
    newer C{twist} runner, which has no --nodaemon or --pidfile).
    """
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script), "--nodaemon", "--pidfile="]
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "--nodaemon",
        "--pidfile=",
    ]


def run_demo(state_dir: Path) -> int:
    from appproxy.cli import main as cli_main

    state_dir = state_dir.resolve()
    if not (state_dir / "service.toml").exists():
        code = cli_main(
            [
                "init",
                "--state-dir",
                str(state_dir),
                "--domain",
                DEMO_DOMAIN,
                "--port",
                str(PUBLIC_PORT),
                "--tunnel-port",
                str(TUNNEL_PORT),
                "--app-name",
                DEMO_APP,
                "--internal-url",
                f"http://127.0.0.1:{ECHO_PORT}/",
            ]
        )
        if code:
            return code
    url = f"https://{DEMO_APP}.{DEMO_DOMAIN}:{PUBLIC_PORT}/"
    commands = {
        "echo-app": [sys.executable, "-m", "appproxy.demo", "echo", "--port", str(ECHO_PORT)],
        "service": [*_twistd(), "appproxy", "--config", str(state_dir / "service.toml")],
        "connector": [
            *_twistd(),
            "appproxy-connector",
            "--config",
            str(state_dir / "connector" / "connector.toml"),
        ],
    }
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, argv in commands.items():
            children[name] = subprocess.Popen(argv, cwd=state_dir)  # noqa: S603
            time.sleep(0.5)
        print(
            f"\nappproxy demo is running.\n\n"
            f"  Open:  {url}\n"
            f"         (your browser will warn about the demo CA; trust {state_dir / 'ca.pem'}"
            f" or accept the warning)\n"
            f"  curl:  curl --cacert {state_dir / 'ca.pem'} "
            f"--resolve {DEMO_APP}.{DEMO_DOMAIN}:{PUBLIC_PORT}:127.0.0.1 {url}\n\n"
            f"Press Ctrl-C to stop.\n",
            flush=True,
        )
        while all(child.poll() is None for child in children.values()):
            time.sleep(0.5)
        for name, child in children.items():
            if child.poll() is not None:
                print(
                    f"appproxy demo: {name} exited with status {child.returncode}", file=sys.stderr
                )
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appproxy.demo")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the demo")
    run.add_argument("--state-dir", default=os.environ.get("APPPROXY_DEMO_DIR", ".demo"))
    echo = sub.add_parser("echo", help="run only the header-echo app")
    echo.add_argument("--port", type=int, default=ECHO_PORT)
    args = parser.parse_args(argv)
    if args.command == "echo":
        run_echo(args.port)
        return 0
    return run_demo(Path(args.state_dir))


if __name__ == "__main__":
    raise SystemExit(main())
