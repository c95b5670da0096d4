"""
C{appproxy init}: a private CA, the service's TLS and tunnel certificates, a
connector certificate and a working service + connector configuration, in one
new directory; the connector is recorded in the service's state database
(L{appproxy.cli.init_state}), which admits only the connectors it knows.

The command line is checked into an L{InitPlan} and every certificate is made
before anything is written; a failure while writing removes what was written.
What to run next is printed by L{appproxy.cli.init_steps}.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import secrets
import urllib.parse
from pathlib import Path
from typing import TextIO

import attrs

from appproxy.cli.init_config import (
    METRICS_LISTEN,
    Addresses,
    InitPlan,
    connector_toml,
    service_toml,
)
from appproxy.cli.init_state import record_init_connector
from appproxy.cli.init_steps import KEY_MODE, print_next_steps
from appproxy.daemon import pki
from appproxy.state.schema import DATABASE_NAME

__all__ = ["UsageError", "add_init_command"]

_DNS_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")

_KEY_MODE = KEY_MODE
_FILE_MODE = 0o644
_DIR_MODE = 0o700
_PARENT_MODE = 0o755


class UsageError(ValueError):
    """A problem with the command line or its target, reported in one line."""


# ---------------------------------------------------------------------------
# validation


def _dns_name(value: str) -> str:
    """A lowercase DNS name (no wildcard, not an IP address)."""
    name = value.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or not all(_DNS_LABEL_RE.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise UsageError(f"{value!r} is not a valid DNS domain name")
    return name


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1-65535)")
    return port


def _http_url(value: str) -> str:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UsageError(f"internal URL {value!r} is not an http or https URL")
    if parsed.query or parsed.fragment or parsed.username or parsed.password:
        raise UsageError(f"internal URL {value!r} must not have a query, fragment or userinfo")
    if not parsed.path.endswith("/"):
        raise UsageError(f"internal URL {value!r} must end with '/'")
    try:
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise UsageError(f"internal URL {value!r} has an invalid port") from None
    return value


def _ip(value: str) -> str:
    try:
        return ipaddress.ip_address(value.strip("[]")).compressed
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IP address") from None


def _service_address(value: str) -> str:
    try:
        return _ip(value)
    except argparse.ArgumentTypeError:
        try:
            return _dns_name(value)
        except UsageError:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not an IP address or DNS name"
            ) from None


def _plan(args: argparse.Namespace) -> InitPlan:
    """Check the command line; nothing is written yet."""
    domain = _dns_name(args.domain)
    app_name = args.app_name
    if not _NAME_RE.match(app_name):
        raise UsageError(f"app name {app_name!r} must be 1-64 letters, digits, '-' or '_'")
    app_host_label = app_name.lower()
    if not _DNS_LABEL_RE.match(app_host_label):
        raise UsageError(f"app name {app_name!r} is not usable as a host name label")
    app_host = _dns_name(f"{app_host_label}.{domain}")
    tunnel_host = _dns_name(f"tunnel.{domain}")
    internal_url = _http_url(args.internal_url)
    if args.listen is not None and not args.listen.strip():
        raise UsageError("--listen must not be empty")
    addresses = Addresses.from_bind(
        ipaddress.ip_address(args.bind),
        port=args.port,
        tunnel_port=args.tunnel_port,
        listen=args.listen,
        service_address=args.service_address,
    )
    return InitPlan(
        state_dir=Path(args.state_dir).absolute(),
        domain=domain,
        app_name=app_name,
        app_host=app_host,
        tunnel_host=tunnel_host,
        login_host=_dns_name(f"login.{domain}"),
        internal_url=internal_url,
        group=args.group,
        connector_id=args.connector_id,
        port=args.port,
        tunnel_port=args.tunnel_port,
        listen=addresses.listen,
        tunnel_listen=addresses.tunnel_listen,
        data_dir=Path(args.data_dir).absolute() if args.data_dir is not None else None,
        service_address=addresses.service_address,
        provider_address=addresses.provider_address,
        with_connector=not args.no_connector,
        metrics_listen=None if args.metrics_listen.strip() in ("", "none") else args.metrics_listen,
    )


# ---------------------------------------------------------------------------
# files


def _ensure_empty_target(state_dir: Path) -> bool:
    """
    Check that C{state_dir} is absent or an empty directory.

    @return: whether it already exists.
    """
    if not state_dir.exists() and not state_dir.is_symlink():
        return False
    if not state_dir.is_dir():
        raise UsageError(f"{state_dir} exists and is not a directory")
    if any(state_dir.iterdir()):
        raise UsageError(f"{state_dir} already exists and is not empty; refusing to overwrite it")
    return True


def _files(plan: InitPlan) -> list[tuple[str, bytes, int]]:
    """
    The files to write: (path under the state directory, contents, mode).

    @raise ValueError: a bad connector group or id (from L{pki}).
    """
    domain = plan.domain
    ca = pki.generate_ca(f"appproxy CA for {domain}")
    service = pki.issue_server_certificate(ca, [f"*.{domain}", domain])
    tunnel = pki.issue_server_certificate(ca, [plan.tunnel_host])
    pki.check_connector_names(plan.connector_id, plan.group)
    files = [
        ("ca.pem", ca.cert_pem, _FILE_MODE),
        ("ca.key", ca.key_pem, _KEY_MODE),
        ("tls/service.pem", service.cert_pem, _FILE_MODE),
        ("tls/service.key", service.key_pem, _KEY_MODE),
        ("tls/tunnel.pem", tunnel.cert_pem, _FILE_MODE),
        ("tls/tunnel.key", tunnel.key_pem, _KEY_MODE),
        ("service.toml", service_toml(plan).encode("utf-8"), _FILE_MODE),
        ("oidc-client-secret", secrets.token_urlsafe(32).encode("ascii") + b"\n", _KEY_MODE),
    ]
    if plan.with_connector:
        connector = pki.issue_connector_certificate(ca, plan.connector_id, plan.group)
        files += [
            ("connector/ca.pem", ca.cert_pem, _FILE_MODE),
            ("connector/connector.pem", connector.cert_pem, _FILE_MODE),
            ("connector/connector.key", connector.key_pem, _KEY_MODE),
            ("connector/connector.toml", connector_toml(plan).encode("utf-8"), _FILE_MODE),
        ]
    return files


@attrs.define
class _Writer:
    """Creates files and directories, remembering them to undo on failure."""

    files: list[Path] = attrs.field(factory=list)
    dirs: list[Path] = attrs.field(factory=list)

    def mkdir(self, path: Path, mode: int = _DIR_MODE) -> None:
        path.mkdir(mode=mode)
        self.dirs.append(path)
        os.chmod(path, mode)

    def makedirs(self, path: Path) -> None:
        """C{path} (mode 0700) and its missing parents (0755), if missing."""
        missing = [p for p in [path, *path.parents] if not p.exists() and not p.is_symlink()]
        for directory in reversed(missing):
            self.mkdir(directory, _DIR_MODE if directory == path else _PARENT_MODE)

    def created(self, path: Path) -> None:
        """C{path}, made by something else, is to be removed on failure."""
        self.files.append(path)

    def write(self, path: Path, data: bytes, mode: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        self.files.append(path)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)

    def undo(self) -> None:
        for path in reversed(self.files):
            path.unlink(missing_ok=True)
        for path in reversed(self.dirs):
            try:
                path.rmdir()
            except OSError:
                pass


def _write(plan: InitPlan, existed: bool, files: list[tuple[str, bytes, int]]) -> None:
    """Write C{files}; on any failure remove what was written and re-raise."""
    state_dir = plan.state_dir
    writer = _Writer()
    try:
        if existed:
            os.chmod(state_dir, _DIR_MODE)
        else:
            writer.mkdir(state_dir)
        subdirs = ["tls"]
        if plan.with_connector:
            subdirs.append("connector")
        if plan.data_dir is None:
            subdirs.append("state")
        for sub in subdirs:
            writer.mkdir(state_dir / sub)
        for name, data, mode in files:
            writer.write(state_dir / name, data, mode)
        if plan.with_connector:
            _record(plan, files, writer)
    except BaseException:
        writer.undo()
        raise


def _record(plan: InitPlan, files: list[tuple[str, bytes, int]], writer: _Writer) -> None:
    """
    Record the connector init issued in the service's state database (made
    in C{--data-dir}, with the directory if missing): the service admits
    only the connector certificates its database knows.
    """
    state = plan.data_dir if plan.data_dir is not None else plan.state_dir / "state"
    writer.makedirs(state)
    database = state / DATABASE_NAME
    if not database.exists():
        for suffix in ("", "-wal", "-shm", "-journal"):
            writer.created(database.with_name(database.name + suffix))
    cert_pem = next(data for name, data, _ in files if name == "connector/connector.pem")
    record_init_connector(
        database, connector_id=plan.connector_id, group=plan.group, cert_pem=cert_pem
    )


# ---------------------------------------------------------------------------
# the command


def _cmd_init(args: argparse.Namespace, out: TextIO) -> int:
    plan = _plan(args)
    existed = _ensure_empty_target(plan.state_dir)
    # Everything is generated before anything is written: a bad group or
    # connector id (ValueError from pki) leaves no trace.
    files = _files(plan)
    _write(plan, existed, files)
    ca_pem = next(data for name, data, _ in files if name == "ca.pem")
    print_next_steps(plan, files, ca_pem, out)
    return 0


def add_init_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register C{appproxy init}."""
    parser = subparsers.add_parser(
        "init",
        help="create a CA, certificates and a working service + connector configuration",
        description=(
            "Create DIR with a private CA, the service's TLS and tunnel certificates, "
            "a connector certificate, service.toml and connector/connector.toml; record "
            "the connector in the service's state database (DIR/state or --data-dir)."
        ),
    )
    parser.add_argument(
        "--state-dir", required=True, metavar="DIR", help="must not exist or be empty"
    )
    parser.add_argument("--domain", required=True, help="apps are published as NAME.DOMAIN")
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="the service's state directory, service.state_dir (default: DIR/state; "
        "under systemd: /var/lib/appproxy)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=8443,
        help="public HTTPS port, in every URL and the listener (default: 8443)",
    )
    parser.add_argument(
        "--tunnel-port", type=_port, default=8444, help="port connectors dial (default: 8444)"
    )
    parser.add_argument(
        "--bind",
        type=_ip,
        default="127.0.0.1",
        metavar="ADDRESS",
        help="the address both listeners bind (default: 127.0.0.1; 0.0.0.0 or :: for a "
        "public service)",
    )
    parser.add_argument(
        "--service-address",
        type=_service_address,
        default=None,
        metavar="ADDRESS",
        help="the address the connector dials (default: the --bind address; for 0.0.0.0 "
        "or :: none, so the connector resolves tunnel.DOMAIN)",
    )
    parser.add_argument(
        "--listen",
        default=None,
        metavar="ENDPOINT",
        help="public listener endpoint, overriding --bind and --port for the listener "
        "(default: tcp:PORT:interface=ADDRESS)",
    )
    parser.add_argument(
        "--metrics-listen",
        default=METRICS_LISTEN,
        metavar="ENDPOINT",
        help=f"the Prometheus metrics listener, plain HTTP (default: {METRICS_LISTEN}; "
        "'none': off)",
    )
    parser.add_argument("--group", default="default", help="connector group (default: default)")
    parser.add_argument(
        "--connector-id", default="connector-1", help="connector id (default: connector-1)"
    )
    parser.add_argument(
        "--no-connector",
        action="store_true",
        help="issue no connector certificate: every connector registers "
        "(appproxy-connector register), as init's output shows",
    )
    parser.add_argument(
        "--internal-url",
        default="http://127.0.0.1:8080/",
        help="the internal app's URL (default: http://127.0.0.1:8080/)",
    )
    parser.add_argument("--app-name", default="demo", help="the app's name (default: demo)")
    parser.set_defaults(func=_cmd_init)
