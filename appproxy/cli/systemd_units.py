"""
The systemd units C{appproxy install} writes: L{UnitPaths}, what differs
between installations, and the two unit files rendered from it. Pure: no
I/O. C{contrib/systemd/} holds the units for the default paths
(L{DEFAULT_SERVICE}, L{DEFAULT_CONNECTOR}); a test keeps them equal to what
this module renders.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Final

import attrs

__all__ = [
    "DEFAULT_CONNECTOR",
    "DEFAULT_CONNECTOR_DIR",
    "DEFAULT_SERVICE",
    "HIDDEN_FROM_UNITS",
    "UnitPaths",
    "connector_unit",
    "service_unit",
    "unit_safe",
]

#: Characters a path may hold to appear in a unit file as it is (no quoting,
#: no C{%} specifiers, no C{$} expansion).
_UNIT_SAFE = re.compile(r"/[A-Za-z0-9._/@+-]*\Z")

#: Where the units' hardening makes a path invisible to the daemon:
#: C{ProtectHome=yes} and C{PrivateTmp=yes}.
HIDDEN_FROM_UNITS: Final = tuple(
    PurePosixPath(p)
    for p in ("/home", "/root", "/run/user", "/tmp", "/var/tmp")  # noqa: S108
)

#: systemd's own directory for C{StateDirectory=}.
_STATE_ROOT: Final = PurePosixPath("/var/lib")


def unit_safe(path: PurePosixPath) -> bool:
    """Whether C{path} can be written in a unit file as it is."""
    return bool(_UNIT_SAFE.match(str(path))) and ".." not in path.parts


@attrs.frozen
class UnitPaths:
    """What differs between installations of one daemon."""

    prefix: PurePosixPath
    """The virtualenv appproxy is installed in: C{PREFIX/bin/twistd}."""
    config: PurePosixPath
    """The daemon's configuration file."""
    user: str
    """The user the daemon runs as."""
    group: str
    """Its group."""
    state_dir: PurePosixPath | None = None
    """
    The one place the daemon writes: the service's state directory; the
    connector's is the directory of its configuration (renewal replaces its
    key and certificate there).
    """

    @property
    def twistd(self) -> PurePosixPath:
        """The program the unit runs."""
        return self.prefix / "bin" / "twistd"


DEFAULT_SERVICE: Final = UnitPaths(
    prefix=PurePosixPath("/opt/appproxy"),
    config=PurePosixPath("/etc/appproxy/service.toml"),
    user="appproxy",
    group="appproxy",
    state_dir=PurePosixPath("/var/lib/appproxy"),
)

#: Where C{appproxy-connector register --state-dir} puts a connector's files.
DEFAULT_CONNECTOR_DIR: Final = PurePosixPath("/var/lib/appproxy-connector")

DEFAULT_CONNECTOR: Final = UnitPaths(
    prefix=PurePosixPath("/opt/appproxy"),
    config=DEFAULT_CONNECTOR_DIR / "connector.toml",
    user="appproxy",
    group="appproxy",
    state_dir=DEFAULT_CONNECTOR_DIR,
)

_COMMON = """\
Restart=on-failure
RestartSec=2
# 78 (EX_CONFIG) is an invalid configuration: restarting will not fix it.
RestartPreventExitStatus=78
# In-flight requests are drained at shutdown; give them time.
TimeoutStopSec=90

User={user}
Group={group}
LimitNOFILE=65536
"""

_HARDENING = """\
# Hardening: the file system is read-only{writable}, no
# access to home directories, /tmp, devices or kernel settings, IP and Unix
# sockets only (Unix for sd_notify and journald).
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
LockPersonality=yes
# No MemoryDenyWriteExecute=yes: pyOpenSSL's callbacks (SNI, ALPN, certificate
# verification) are cffi ffi.callback()s, which need writable+executable
# memory; with W^X enforced every TLS context fails with "Cannot allocate
# write+execute memory for ffi.callback()".
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""


def _exec_start(paths: UnitPaths, plugin: str) -> str:
    return f"ExecStart={paths.twistd} --nodaemon --pidfile= {plugin} --config {paths.config}"


def _check(paths: UnitPaths) -> None:
    for path in (paths.prefix, paths.config, paths.state_dir):
        if path is not None and not unit_safe(path):
            raise ValueError(
                f"{str(path)!r} cannot be written in a unit file: use an absolute path of "
                "letters, digits and . _ / @ + - only"
            )


def _state_lines(paths: UnitPaths, daemon: str, comment: str) -> str:
    """
    The daemon's one writable path: C{ReadWritePaths=} its state directory,
    and C{StateDirectory=} (systemd makes it, the user's, 0700, at start) when
    it is under C{/var/lib}.
    """
    state = paths.state_dir
    if state is None:
        raise ValueError(f"the {daemon}'s unit needs its state directory")
    lines = f"{comment}ReadWritePaths={state}\n"
    if state.is_relative_to(_STATE_ROOT) and state != _STATE_ROOT:
        lines += f"StateDirectory={state.relative_to(_STATE_ROOT)}\nStateDirectoryMode=0700\n"
    return lines


def service_unit(paths: UnitPaths) -> str:
    """C{appproxy.service}."""
    _check(paths)
    state_lines = _state_lines(
        paths,
        "service",
        "# The state directory (service.state_dir) is the one writable path.\n",
    )
    return (
        f"""\
# appproxy service: the public HTTPS listener and the tunnel endpoint for
# connectors. Written by "appproxy install service"; configuration in
# {paths.config} (docs/configuration.md).
[Unit]
Description=appproxy application proxy service
After=network-online.target
Wants=network-online.target

[Service]
# appproxy calls sd_notify(READY=1) once its listeners are bound, RELOADING=1
# on SIGHUP and STOPPING=1 at shutdown; only the main process may notify.
Type=notify
NotifyAccess=main
# twistd stays in the foreground, with no pid file: systemd tracks the process.
{_exec_start(paths, "appproxy")}
# SIGHUP reloads the configuration and certificates.
ExecReload=/bin/kill -HUP $MAINPID
"""
        + _COMMON.format(user=paths.user, group=paths.group)
        + state_lines
        + """
# Bind 443 without running as root; no other capability.
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
AmbientCapabilities=CAP_NET_BIND_SERVICE

"""
        + _HARDENING.format(writable=" except the state directory")
    )


def connector_unit(paths: UnitPaths) -> str:
    """
    C{appproxy-connector.service}; C{paths.state_dir} is the directory of
    its configuration.
    """
    _check(paths)
    if paths.state_dir != paths.config.parent:
        raise ValueError("the connector's unit needs the directory of its configuration")
    state_lines = _state_lines(
        paths,
        "connector",
        "# The configuration's directory is the connector's state, its one writable\n"
        "# path: renewal replaces the key and certificate there.\n",
    )
    return (
        f"""\
# appproxy connector: runs inside the private network and dials out to the
# service over mutual TLS; it never listens. Written by "appproxy install
# connector"; configuration in {paths.config}
# with its certificate and key next to it (docs/configuration.md).
[Unit]
Description=appproxy connector
After=network-online.target
Wants=network-online.target

[Service]
# appproxy-connector calls sd_notify(READY=1) once started, RELOADING=1 on
# SIGHUP and STOPPING=1 at shutdown; only the main process may notify.
Type=notify
NotifyAccess=main
# twistd stays in the foreground, with no pid file: systemd tracks the process.
{_exec_start(paths, "appproxy-connector")}
# SIGHUP reloads the configuration and certificate.
ExecReload=/bin/kill -HUP $MAINPID
"""
        + _COMMON.format(user=paths.user, group=paths.group)
        + state_lines
        + """
# Outbound connections only: no capabilities at all.
CapabilityBoundingSet=

"""
        + _HARDENING.format(writable=" except the connector's directory")
    )
