"""
The C{appproxy} administration command.

    appproxy init --state-dir DIR --domain DOMAIN [options]

Each subcommand is a function C{(args) -> int} registered with
C{set_defaults(func=...)} by an C{_add_*} function in L{_parser}. Expected
errors (L{OSError}, L{ValueError}) become one C{appproxy: error: ...} line on
stderr and exit status 1; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from appproxy.daemon import pki

__all__ = ["main"]

_PROG = "appproxy"

_DNS_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")

_KEY_MODE = 0o600
_FILE_MODE = 0o644
_DIR_MODE = 0o700


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


# ---------------------------------------------------------------------------
# TOML output


def _toml_str(value: str) -> str:
    """A TOML basic string."""
    out = ['"']
    for char in value:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _service_toml(
    *,
    listen: str,
    tunnel_port: int,
    app_name: str,
    external_url: str,
    internal_url: str,
    group: str,
    login_origin: str,
    provider_address: str,
) -> str:
    return f"""\
# appproxy service configuration (written by "appproxy init").
# Relative paths are resolved against the directory holding this file.
# Reference: docs/configuration.md

[service]
# Public HTTPS listener (a Twisted endpoint string); appproxy adds TLS itself.
listen = {_toml_str(listen)}
# Durable state (created if missing).
state_dir = "state"
# Seconds a request may wait for a free connector before a 503.
queue_timeout = 10
# "text" for people, "json" (JSON lines on stdout) for machines.
# log_format = "text"

# One or more certificates; the one whose names match the SNI host name is
# used, the first one otherwise.
[[service.certificates]]
cert = "tls/service.pem"
key = "tls/service.key"

[tunnel]
# Listener for connectors (mutual TLS, HTTP/2).
listen = {_toml_str(f"tcp:{tunnel_port}:interface=127.0.0.1")}
# The certificate connectors verify (it names the tunnel host).
cert = "tls/tunnel.pem"
key = "tls/tunnel.key"
# The CA that signs connector client certificates.
connector_ca = "ca.pem"

[[apps]]
# Unique name, shown in logs and error pages.
name = {_toml_str(app_name)}
# What users open.
external_url = {_toml_str(external_url)}
# Where the connector sends the requests.
internal_url = {_toml_str(internal_url)}
# The connectors that serve this app (the group is in their certificates).
connector_group = {_toml_str(group)}
# Users sign in (OpenID Connect) before any request reaches the app;
# "passthrough" publishes it without sign-in.
pre_authentication = "oidc"
# Who may use the app (both empty: every signed-in user).
# allowed_users = ["alice"]
# allowed_groups = ["staff"]
# Optional, with their defaults:
# session_lifetime = 28800
# persistent_cookie = false
# http_only_cookie = true
# jwt_assertion = false
# translate_urls_in_headers = true
# backend_timeout = "default"
# verify_backend_tls = true

# Header-based single sign-on: header = claim.
[apps.headers]
X-Remote-User = "preferred_username"
X-Remote-Name = "name"
X-Remote-Email = "email"
X-Remote-Groups = "groups"

[oidc]
# The OpenID provider users sign in with. Here: the service's own built-in
# provider ([builtin_provider] below); for Entra ID, Okta, Keycloak or Google
# put its issuer URL, your client id and a file holding the client secret.
issuer = {_toml_str(login_origin)}
client_id = "appproxy"
client_secret_file = "oidc-client-secret"
# client_auth = "client_secret_basic"
# The one redirect URI to register at the provider.
callback_url = {_toml_str(login_origin + "/.appproxy/callback")}
# Which claim is the user name, and which holds the groups.
# username_claim = "preferred_username"
# groups_claim = "groups"
# Trust for the provider's TLS (default: the system's CA store).
provider_ca = "ca.pem"
# Connect here instead of resolving the issuer's host name.
provider_address = {_toml_str(provider_address)}

[builtin_provider]
# The service's own OpenID provider, for a machine with nothing else.
# Add users with: appproxy users add NAME --state-dir DIR/state
issuer = {_toml_str(login_origin)}
"""


def _connector_toml(*, service_host: str, tunnel_port: int) -> str:
    return f"""\
# appproxy connector configuration (written by "appproxy init").
# Relative paths are resolved against the directory holding this file.
# Reference: docs/configuration.md

[connector]
# The host name the service's tunnel certificate must carry.
service_host = {_toml_str(service_host)}
# The service's tunnel port.
service_port = {tunnel_port}
# Dial this address instead of resolving service_host.
service_address = "127.0.0.1"
# Tunnel connections kept open.
connections = 4
# Concurrent requests per connection.
capacity = 100
# The service CA pinned at setup; it signed the service's tunnel certificate.
ca = "ca.pem"
# This connector's client certificate; it names the connector and its group.
cert = "connector.pem"
key = "connector.key"
# Optional, with their defaults:
# ping_interval = 15
# log_format = "text"
"""


# ---------------------------------------------------------------------------
# init


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


class _Writer:
    """Creates files and directories, remembering them to undo on failure."""

    def __init__(self) -> None:
        self.files: list[Path] = []
        self.dirs: list[Path] = []

    def mkdir(self, path: Path) -> None:
        path.mkdir(mode=_DIR_MODE)
        self.dirs.append(path)
        os.chmod(path, _DIR_MODE)

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


def _cmd_init(args: argparse.Namespace, out: TextIO) -> int:
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
    port: int = args.port
    tunnel_port: int = args.tunnel_port
    listen: str = args.listen if args.listen is not None else f"tcp:{port}:interface=127.0.0.1"
    if not listen.strip():
        raise UsageError("--listen must not be empty")
    external_url = f"https://{app_host}/" if port == 443 else f"https://{app_host}:{port}/"
    login_host = _dns_name(f"login.{domain}")
    login_origin = f"https://{login_host}" if port == 443 else f"https://{login_host}:{port}"

    state_dir = Path(args.state_dir).absolute()
    existed = _ensure_empty_target(state_dir)

    # Everything is generated before anything is written: a bad group or
    # connector id (ValueError from pki) leaves no trace.
    ca = pki.generate_ca(f"appproxy CA for {domain}")
    service = pki.issue_server_certificate(ca, [f"*.{domain}", domain])
    tunnel = pki.issue_server_certificate(ca, [tunnel_host])
    connector = pki.issue_connector_certificate(ca, args.connector_id, args.group)
    service_toml = _service_toml(
        listen=listen,
        tunnel_port=tunnel_port,
        app_name=app_name,
        external_url=external_url,
        internal_url=internal_url,
        group=args.group,
        login_origin=login_origin,
        provider_address=f"127.0.0.1:{port}",
    )
    connector_toml = _connector_toml(service_host=tunnel_host, tunnel_port=tunnel_port)

    files: list[tuple[str, bytes, int]] = [
        ("ca.pem", ca.cert_pem, _FILE_MODE),
        ("ca.key", ca.key_pem, _KEY_MODE),
        ("tls/service.pem", service.cert_pem, _FILE_MODE),
        ("tls/service.key", service.key_pem, _KEY_MODE),
        ("tls/tunnel.pem", tunnel.cert_pem, _FILE_MODE),
        ("tls/tunnel.key", tunnel.key_pem, _KEY_MODE),
        ("service.toml", service_toml.encode("utf-8"), _FILE_MODE),
        ("oidc-client-secret", secrets.token_urlsafe(32).encode("ascii") + b"\n", _KEY_MODE),
        ("connector/ca.pem", ca.cert_pem, _FILE_MODE),
        ("connector/connector.pem", connector.cert_pem, _FILE_MODE),
        ("connector/connector.key", connector.key_pem, _KEY_MODE),
        ("connector/connector.toml", connector_toml.encode("utf-8"), _FILE_MODE),
    ]

    writer = _Writer()
    try:
        if existed:
            os.chmod(state_dir, _DIR_MODE)
        else:
            writer.mkdir(state_dir)
        for sub in ("tls", "connector", "state"):
            writer.mkdir(state_dir / sub)
        for name, data, mode in files:
            writer.write(state_dir / name, data, mode)
    except BaseException:
        writer.undo()
        raise

    quoted = shlex.quote(str(state_dir))
    print(f"Wrote {state_dir}:", file=out)
    for name, _, mode in files:
        print(f"  {name}{'  (private key, mode 0600)' if mode == _KEY_MODE else ''}", file=out)
    print("  state/  (durable state of the service)", file=out)
    print("", file=out)
    print("Start the service:", file=out)
    print(
        f"  twistd --nodaemon --pidfile= appproxy --config {quoted}/service.toml",
        file=out,
    )
    print("Start the connector (in another terminal):", file=out)
    connector_config = f"{quoted}/connector/connector.toml"
    print(
        f"  twistd --nodaemon --pidfile= appproxy-connector --config {connector_config}",
        file=out,
    )
    print("", file=out)
    print("Add a user who may sign in:", file=out)
    print(f"  appproxy users add alice --state-dir {quoted}/state", file=out)
    print("", file=out)
    print(f"Then open {external_url}", file=out)
    print(f"(the app at {internal_url} must be running;", file=out)
    print(f" the certificate is signed by {quoted}/ca.pem), for example:", file=out)
    if "interface=127.0.0.1" in listen:
        host_port = f"{app_host}:{port}"
        print(
            f"  curl --cacert {quoted}/ca.pem --resolve {host_port}:127.0.0.1 {external_url}",
            file=out,
        )
    return 0


def _add_init(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "init",
        help="create a CA, certificates and a working service + connector configuration",
        description=(
            "Create DIR with a private CA, the service's TLS and tunnel certificates, "
            "a connector certificate, service.toml and connector/connector.toml."
        ),
    )
    parser.add_argument(
        "--state-dir", required=True, metavar="DIR", help="must not exist or be empty"
    )
    parser.add_argument("--domain", required=True, help="apps are published as NAME.DOMAIN")
    parser.add_argument(
        "--listen",
        default=None,
        metavar="ENDPOINT",
        help="public listener endpoint (default: tcp:PORT:interface=127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=8443,
        help="public HTTPS port in the app's URL (default: 8443)",
    )
    parser.add_argument(
        "--tunnel-port", type=_port, default=8444, help="port connectors dial (default: 8444)"
    )
    parser.add_argument("--group", default="default", help="connector group (default: default)")
    parser.add_argument(
        "--connector-id", default="connector-1", help="connector id (default: connector-1)"
    )
    parser.add_argument(
        "--internal-url",
        default="http://127.0.0.1:8080/",
        help="the internal app's URL (default: http://127.0.0.1:8080/)",
    )
    parser.add_argument("--app-name", default="demo", help="the app's name (default: demo)")
    parser.set_defaults(func=_cmd_init)


def _add_users(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appproxy.idp.users import add_users_command

    add_users_command(subparsers)


def _add_keys(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appproxy.access.keyring import add_keys_command

    add_keys_command(subparsers)


def _add_logs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appproxy.state.signinlog import add_logs_command

    add_logs_command(subparsers)


def _add_policy(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appproxy.access.policy import add_policy_command

    add_policy_command(subparsers, _load_policies)


def _load_policies(path: str) -> tuple[Any, Any]:
    """The policies and assignments of a service configuration file."""
    from appproxy.config.loader import ConfigError, load_service_config
    from appproxy.gate.setup import policy_set

    try:
        config = load_service_config(path)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    return policy_set(config), {app.name: app.assignment for app in config.apps}


_SUBCOMMANDS: Sequence[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = (
    _add_init,
    _add_users,
    _add_keys,
    _add_logs,
    _add_policy,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROG, description="appproxy administration")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the C{appproxy} command; return its exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        # argparse has printed usage or help already.
        return e.code if isinstance(e.code, int) else 2
    func: Callable[[argparse.Namespace, TextIO], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return func(args, sys.stdout)
    except (OSError, ValueError) as e:
        print(f"{_PROG}: error: {_describe(e)}", file=sys.stderr)
        return 1


def _describe(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error)
