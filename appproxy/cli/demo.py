"""
C{appproxy demo}: the whole path on one machine.

Creates a state directory (once), then runs the service and a connector as
real C{twistd} daemons and a small "legacy" app that echoes the headers it
receives; users sign in with the service's built-in identity provider, as
a demo user made on the first run.  The connector registers on the first
run, as one on another host does, with a one-time enrolment token
(L{appproxy.cli.demo_register}): its key is made for it, not copied from
C{appproxy init}, which makes none here.  Once a signed-in request really comes
back from the app through the tunnel (L{appproxy.cli.demo_ready}), prints
the URL, the user and password.  SIGINT, SIGTERM or SIGHUP stop every child
(L{appproxy.cli.demo_processes}); ports already taken are reported in one
line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import secrets
import sys
import threading
import time
import tomllib
from pathlib import Path

import attrs

from appproxy.cli.demo_processes import Children, StopSignals, port_in_use
from appproxy.cli.demo_ready import NotReady, ReadyCheck, check_ready
from appproxy.cli.demo_register import RegistrationFailed, register_connector

DEMO_DOMAIN = "appproxy.localhost"
DEMO_APP = "echo"
DEMO_USER = "demo"
#: The connector group of the demo app and its connector.
DEMO_GROUP = "default"
PUBLIC_PORT = 8443
TUNNEL_PORT = 8444
ECHO_PORT = 8080
#: Seconds the demo waits for a signed-in request to come back from the app.
READY_TIMEOUT = 60.0


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


class DemoError(Exception):
    """Something that stops the demo, told in one line."""


@attrs.frozen
class Ports:
    """The demo's three ports on 127.0.0.1."""

    public: int = PUBLIC_PORT
    tunnel: int = TUNNEL_PORT
    echo: int = ECHO_PORT

    def described(self) -> list[tuple[int, str]]:
        return [
            (self.public, "the service's HTTPS port"),
            (self.tunnel, "the tunnel port"),
            (self.echo, "the echo app's port"),
        ]


def _port_of(text: str, pattern: str) -> int:
    found = re.search(pattern, text)
    if found is None:
        raise DemoError(f"cannot find the port in {text!r}")
    return int(found.group(1))


def _configured_ports(config: Path) -> Ports:
    """The ports a demo directory was made for (read from its service.toml)."""
    try:
        data = tomllib.loads(config.read_text("utf-8"))
        return Ports(
            public=_port_of(data["service"]["listen"], r"^tcp:(\d+)"),
            tunnel=_port_of(data["tunnel"]["listen"], r"^tcp:(\d+)"),
            echo=_port_of(data["apps"][0]["internal_url"], r":(\d+)/"),
        )
    except (KeyError, IndexError, TypeError, tomllib.TOMLDecodeError) as e:
        raise DemoError(f"{config} is not a demo configuration ({e})") from None


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


def _ports(state_dir: Path, requested: Ports | None) -> Ports:
    """The ports of the demo directory, or those asked for a new one."""
    config = state_dir / "service.toml"
    if config.exists() and not all(
        needed in config.read_text("utf-8", "replace")
        for needed in ("[builtin_provider]", "connector_ca_key")
    ):
        # Made by an older appproxy without sign-in, or whose connector the
        # service no longer admits (not registered): start afresh beside it.
        old = state_dir.with_name(f"{state_dir.name}.old-{int(time.time())}")
        state_dir.rename(old)
        print(f"appproxy demo: moved the old demo directory to {old}", flush=True)
    if not config.exists():
        return requested or Ports()
    ports = _configured_ports(config)
    if requested is not None and requested != ports:
        raise DemoError(
            f"{state_dir} was made for ports {ports.public}, {ports.tunnel} and"
            f" {ports.echo}; use those, or another --state-dir"
        )
    return ports


def _create(state_dir: Path, ports: Ports) -> None:
    """
    Make the demo directory on the first run with C{appproxy init} (its
    instructions, for a setup made by hand, are not printed), without a
    connector: it registers (L{_register}).
    """
    from appproxy.cli.main import main as cli_main

    if (state_dir / "service.toml").exists():
        return
    argv = [
        "init",
        "--state-dir",
        str(state_dir),
        "--domain",
        DEMO_DOMAIN,
        "--port",
        str(ports.public),
        "--tunnel-port",
        str(ports.tunnel),
        "--app-name",
        DEMO_APP,
        "--internal-url",
        f"http://127.0.0.1:{ports.echo}/",
        "--no-connector",
        # The demo's ports are its own; a metrics port would be one more to clash.
        "--metrics-listen=none",
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(argv)
    if code:
        raise DemoError(f"could not create {state_dir} (appproxy init failed, see above)")


def _check_ports(ports: Ports) -> None:
    busy = port_in_use(port for port, _ in ports.described())
    if busy is not None:
        what = dict((port, name) for port, name in ports.described())[busy]
        raise DemoError(
            f"port {busy} on 127.0.0.1 ({what}) is already in use: is a demo already"
            " running, or another program? Stop it, or choose other ports"
            " (--port, --tunnel-port, --echo-port, with another --state-dir)"
        )


def _banner(state_dir: Path, url: str, password: str) -> str:
    return (
        f"\nappproxy demo is running.\n\n"
        f"  Open:     {url}\n"
        f"            (your browser will warn about the demo CA; trust"
        f" {state_dir / 'ca.pem'} or accept the warning, for this host and for"
        f" login.{DEMO_DOMAIN})\n"
        f"  Sign in:  user {DEMO_USER!r}, password {password!r}\n"
        f"            (the built-in identity provider; more users: appproxy users add"
        f" NAME --state-dir {state_dir})\n"
        f"  Then the legacy app shows the headers it received, X-Remote-User among"
        f" them.\n\n"
        f"  Sign-in log: appproxy logs sign-ins --state-dir {state_dir}\n\n"
        f"Press Ctrl-C to stop.\n"
    )


def _commands(state_dir: Path, ports: Ports) -> dict[str, list[str]]:
    return {
        "echo app": [
            sys.executable,
            "-m",
            "appproxy.cli.demo",
            "echo",
            "--port",
            str(ports.echo),
        ],
        "service": [*_twistd(), "appproxy", "--config", str(state_dir / "service.toml")],
        "connector": [
            *_twistd(),
            "appproxy-connector",
            "--config",
            str(state_dir / "connector" / "connector.toml"),
        ],
    }


def _register(
    state_dir: Path, ports: Ports, children: Children, signals: StopSignals, timeout: float
) -> None:
    """
    On the first run (or after an interrupted one), register the demo's
    connector into C{state_dir/connector} once the service listens.
    """
    if (state_dir / "connector" / "connector.toml").exists():
        return

    def stop() -> str | None:
        if signals:
            return "stopped"
        ended = children.exited()
        if ended:
            name, code = ended[0]
            return f"the {name} exited with status {code}"
        return None

    try:
        register_connector(
            state_dir,
            tunnel_host=f"tunnel.{DEMO_DOMAIN}",
            tunnel_port=ports.tunnel,
            group=DEMO_GROUP,
            timeout=timeout,
            stop=stop,
        )
    except (RegistrationFailed, OSError, ValueError) as e:
        raise DemoError(f"could not register the demo's connector: {e}") from None
    print(
        "appproxy demo: the connector registered with a one-time enrolment token"
        f" (appproxy connectors list --state-dir {state_dir})",
        flush=True,
    )


class _Readiness(threading.Thread):
    """L{check_ready} in a thread; C{error} says why it failed, if it did."""

    def __init__(self, check: ReadyCheck, timeout: float, signals: StopSignals) -> None:
        super().__init__(name="ready-check", daemon=True)
        self.check = check
        self.timeout = timeout
        self.signals = signals
        self.error: str | None = None

    def run(self) -> None:
        try:
            check_ready(self.check, self.timeout, lambda: bool(self.signals))
        except NotReady as e:
            self.error = f"the demo did not become ready: {e}"
        except Exception as e:  # any failure means no banner
            self.error = f"the readiness check failed: {type(e).__name__}: {e}"


def _supervise(
    children: Children, signals: StopSignals, ready: _Readiness, banner: str
) -> tuple[int, str | None]:
    """
    Wait for a stop signal, a child's end, or the readiness check's result
    (printing the banner); return the exit status and a last message.
    """
    announced = False
    while not signals:
        ended = children.exited()
        if ended:
            name, code = ended[0]
            return 1, f"the {name} exited with status {code}; stopping the demo"
        if not announced and not ready.is_alive():
            if ready.error is not None:
                return 1, ready.error
            print(banner, flush=True)
            announced = True
        time.sleep(0.1)
    return 0, None


def run_demo(
    state_dir: Path,
    requested: Ports | None = None,
    ready_timeout: float = READY_TIMEOUT,
    signals: StopSignals | None = None,
) -> int:
    """Run the demo until a signal stops it or a part fails; return the exit status."""
    if signals is None:
        signals = StopSignals()
        signals.install()
    state_dir = state_dir.resolve()
    try:
        ports = _ports(state_dir, requested)
        _check_ports(ports)
        _create(state_dir, ports)
        password = _demo_user(state_dir)
    except (DemoError, OSError, ValueError) as e:
        print(f"appproxy demo: {e}", file=sys.stderr)
        return 1
    url = f"https://{DEMO_APP}.{DEMO_DOMAIN}:{ports.public}/"
    ready = _Readiness(
        ReadyCheck(url, state_dir / "ca.pem", DEMO_USER, password), ready_timeout, signals
    )
    children = Children(state_dir)
    code, message = 0, None
    try:
        for name, argv in _commands(state_dir, ports).items():
            if signals:
                break
            if name == "connector":
                _register(state_dir, ports, children, signals, ready_timeout)
            children.start(name, argv)
        else:
            ready.start()
            code, message = _supervise(children, signals, ready, _banner(state_dir, url, password))
    except DemoError as e:
        code, message = (0, None) if signals else (1, str(e))
    finally:
        if message is not None:
            print(f"appproxy demo: {message}", file=sys.stderr, flush=True)
        print("appproxy demo: stopping", flush=True)
        killed = children.stop()
        if killed:
            print(f"appproxy demo: killed (did not stop in time): {', '.join(killed)}")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appproxy.cli.demo")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the demo")
    run.add_argument("--state-dir", default=os.environ.get("APPPROXY_DEMO_DIR", ".demo"))
    run.add_argument("--port", type=int, help=f"HTTPS port (default {PUBLIC_PORT})")
    run.add_argument("--tunnel-port", type=int, help=f"tunnel port (default {TUNNEL_PORT})")
    run.add_argument("--echo-port", type=int, help=f"echo app's port (default {ECHO_PORT})")
    run.add_argument(
        "--ready-timeout",
        type=float,
        default=READY_TIMEOUT,
        help=f"seconds to wait for the demo to work end to end (default {READY_TIMEOUT:g})",
    )
    echo = sub.add_parser("echo", help="run only the header-echo app")
    echo.add_argument("--port", type=int, default=ECHO_PORT)
    args = parser.parse_args(argv)
    if args.command == "echo":
        from appproxy.cli.demo_echo import run_echo

        return run_echo(args.port)
    signals = StopSignals()
    signals.install()
    requested = None
    if (args.port, args.tunnel_port, args.echo_port) != (None, None, None):
        requested = Ports(
            public=args.port or PUBLIC_PORT,
            tunnel=args.tunnel_port or TUNNEL_PORT,
            echo=args.echo_port or ECHO_PORT,
        )
    return run_demo(Path(args.state_dir), requested, args.ready_timeout, signals)


if __name__ == "__main__":
    raise SystemExit(main())
