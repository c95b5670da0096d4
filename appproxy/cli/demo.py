"""
C{appproxy demo}: the whole path on one machine.

Creates a state directory (once), then runs the service and a connector as
real C{twistd} daemons and a small "legacy" app that echoes the headers it
receives; users sign in with the service's built-in identity provider, as
a demo user made on the first run.  Prints the URL, the user and password.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.web import resource, server

DEMO_DOMAIN = "appproxy.localhost"
DEMO_APP = "echo"
DEMO_USER = "demo"
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


def _demo_user(state_dir: Path) -> str:
    """The demo user's password, made (with the user) on the first run."""
    from appproxy.idp.users import add_user

    secret = state_dir / "demo-password"
    if secret.exists():
        return secret.read_text("utf-8").strip()
    password = "-".join(secrets.token_hex(3) for _ in range(3))
    add_user(
        state_dir / "state" / "users.json",
        DEMO_USER,
        password,
        name="Demo User",
        email=f"{DEMO_USER}@{DEMO_DOMAIN}",
        groups=("staff", "demo"),
    )
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def run_demo(state_dir: Path) -> int:
    from appproxy.cli.main import main as cli_main

    state_dir = state_dir.resolve()
    config = state_dir / "service.toml"
    if config.exists() and "[builtin_provider]" not in config.read_text("utf-8", "replace"):
        # Made by an older appproxy without sign-in: start afresh beside it.
        old = state_dir.with_name(f"{state_dir.name}.old-{int(time.time())}")
        state_dir.rename(old)
        print(f"appproxy demo: moved the old demo directory to {old}", flush=True)
    if not config.exists():
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
    password = _demo_user(state_dir)
    url = f"https://{DEMO_APP}.{DEMO_DOMAIN}:{PUBLIC_PORT}/"
    commands = {
        "echo-app": [sys.executable, "-m", "appproxy.cli.demo", "echo", "--port", str(ECHO_PORT)],
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
            f"  Open:     {url}\n"
            f"            (your browser will warn about the demo CA; trust"
            f" {state_dir / 'ca.pem'} or accept the warning, for this host and for"
            f" login.{DEMO_DOMAIN})\n"
            f"  Sign in:  user {DEMO_USER!r}, password {password!r}\n"
            f"            (the built-in identity provider; more users: appproxy users add"
            f" NAME --state-dir {state_dir / 'state'})\n"
            f"  Then the legacy app shows the headers it received, X-Remote-User among"
            f" them.\n\n"
            f"  Sign-in log: appproxy logs sign-ins --state-dir {state_dir}\n\n"
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
    parser = argparse.ArgumentParser(prog="python -m appproxy.cli.demo")
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
