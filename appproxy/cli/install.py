"""
C{appproxy install service|connector}: make a host run a daemon under
systemd, in the spirit of C{cloudflared service install}. Run as root from
the virtualenv appproxy is installed in (C{/opt/appproxy/bin/appproxy}), after
C{appproxy init}:

  1. checks that C{PREFIX/bin/twistd} exists and that the daemon's
     configuration file is valid (the daemon's own loader);
  2. creates the system user (and its group) if missing;
  3. for the service, gives that group read access to the files the
     configuration names (keys become C{root:GROUP 0640}, directories
     C{root:GROUP 0750}) in the configuration's directory; other private
     files stay C{root 0600};
  4. creates the daemon's state directory, owned by the user, mode 0700, and
     gives the user what root wrote there: the service's
     (C{service.state_dir}), and for the connector the directory of its
     configuration (its key stays 0600), where renewal replaces its key and
     certificate;
  5. writes the unit (L{appproxy.cli.systemd_units}) and prints the
     C{systemctl} commands that start it.

Every path is an option, so a test installs into a temporary directory;
C{--dry-run} prints the steps and the unit and changes nothing.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, TextIO, cast

import attrs

from appproxy.cli.install_files import (
    Account,
    check_connector_dir,
    grant,
    open_init_dir,
    state_dir,
    unreadable,
)
from appproxy.cli.systemd_units import (
    DEFAULT_CONNECTOR,
    DEFAULT_SERVICE,
    HIDDEN_FROM_UNITS,
    UnitPaths,
    connector_unit,
    service_unit,
)

__all__ = ["add_install_command"]

_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}\Z")
_UNIT_MODE = 0o644
_UNIT_DIR = "/etc/systemd/system"
_NOLOGIN = "/usr/sbin/nologin"
_PYTHON = "the virtualenv's Python"


@attrs.frozen
class _Kind:
    """One of the two daemons."""

    name: str
    unit_name: str
    default: UnitPaths
    render: Callable[[UnitPaths], str]


_KINDS = (
    _Kind("service", "appproxy.service", DEFAULT_SERVICE, service_unit),
    _Kind("connector", "appproxy-connector.service", DEFAULT_CONNECTOR, connector_unit),
)


def _config_paths(value: object) -> Iterator[Path]:
    """Every path in a loaded configuration (attrs classes, tuples)."""
    if isinstance(value, Path):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from _config_paths(item)
    elif attrs.has(type(value)):
        for field in attrs.fields(cast(Any, type(value))):
            yield from _config_paths(getattr(value, field.name))


def _load(kind: _Kind, config: Path) -> tuple[Any, Path]:
    """
    The daemon's configuration and its state directory: the service's
    C{state_dir}, the directory of the connector's configuration.
    """
    from appproxy.config import ConfigError, load_connector_config, load_service_config

    try:
        if kind.name == "service":
            loaded: Any = load_service_config(config)
            return loaded, loaded.state_dir
        loaded = load_connector_config(config)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    check_connector_dir(config, loaded.cert.cert, loaded.cert.key)
    return loaded, config.parent


def _check_visible(what: str, path: Path) -> None:
    pure = PurePosixPath(path)
    for hidden in HIDDEN_FROM_UNITS:
        if pure.is_relative_to(hidden):
            remedy = (
                "make the virtualenv with the system's Python (/usr/bin/python3 -m venv "
                "/opt/appproxy)"
                if what == _PYTHON
                else "use /opt/appproxy, /etc/appproxy and /var/lib/appproxy"
            )
            raise ValueError(
                f"{what} {path} is under {hidden}, which the unit hides from the daemon "
                f"(ProtectHome=yes, PrivateTmp=yes): {remedy}"
            )


def hidden_path_problem(*, prefix: Path, config: Path, state: Path | None) -> str | None:
    """
    Why C{appproxy install} refuses to run a daemon from the virtualenv
    C{prefix} with the configuration C{config} and the state directory
    C{state} (a unit could not see one of them), or L{None} if it does not.
    C{appproxy init} asks this too, to print an install step only when it
    can work.
    """
    python = Path(os.path.realpath(prefix / "bin" / "python"))
    try:
        for what, path in (
            ("--prefix", prefix),
            (_PYTHON, python),
            ("the configuration", config),
            ("state", state),
        ):
            if path is not None:
                _check_visible(what, path)
    except ValueError as e:
        return str(e)
    return None


def _account(name: str, dry_run: bool, say: Callable[[str], None]) -> Account:
    """The user C{name}, created (a system user with its own group) if missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        group_exists = _group_exists(name)
        argv = ["useradd", "--system", "--home-dir", "/nonexistent", "--no-create-home"]
        argv += ["--shell", _NOLOGIN]
        argv += ["--gid", name] if group_exists else ["--user-group"]
        say(f"create the system user {name}: {' '.join([*argv, name])}")
        if dry_run:
            return Account(name, name, None, None)
        subprocess.run([*argv, name], check=True, stdin=subprocess.DEVNULL)  # noqa: S603
        entry = pwd.getpwnam(name)
    group = grp.getgrgid(entry.pw_gid).gr_name
    return Account(name, group, entry.pw_uid, entry.pw_gid)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _install(kind: _Kind, args: argparse.Namespace, out: TextIO) -> int:
    dry_run: bool = args.dry_run

    def say(line: str) -> None:
        print(("would: " if dry_run else "") + line, file=out)

    config = Path(os.path.normpath(Path(args.config).absolute()))
    prefix = Path(os.path.normpath(Path(args.prefix).absolute()))
    unit_file = Path(args.unit_dir).absolute() / kind.unit_name
    if not _USER_RE.match(args.user):
        raise ValueError(f"--user {args.user!r} is not a valid user name")
    twistd = prefix / "bin" / "twistd"
    if not os.access(twistd, os.X_OK):
        raise ValueError(
            f"{twistd} does not exist: install appproxy into a virtualenv first "
            "(python3 -m venv /opt/appproxy && /opt/appproxy/bin/pip install PACKAGE) "
            "and run this command as /opt/appproxy/bin/appproxy"
        )
    python = Path(os.path.realpath(prefix / "bin" / "python"))
    loaded, state = _load(kind, config)
    problem = hidden_path_problem(prefix=prefix, config=config, state=state)
    if problem is not None:
        raise ValueError(problem)
    if not dry_run and os.geteuid() != 0:
        raise ValueError("run as root (it creates a user and sets ownership), or use --dry-run")
    account = _account(args.user, dry_run, say)
    unit = kind.render(
        UnitPaths(
            prefix=PurePosixPath(prefix),
            config=PurePosixPath(config),
            user=account.user,
            group=account.group,
            state_dir=PurePosixPath(state),
        )
    )
    readable = {Path(os.path.normpath(path)) for path in _config_paths(loaded)}
    if kind.name == "service":
        grant(config.parent, readable, state, account, dry_run, say)
        state_dir(state, account, dry_run, say)
    else:
        open_init_dir(config.parent, account, dry_run, say)
        key = Path(os.path.normpath(loaded.cert.key))
        state_dir(
            state,
            account,
            dry_run,
            say,
            what="the connector's state: renewal replaces its key and certificate there",
            private=frozenset({key}),
        )
    if not dry_run:
        problems = [
            f"{path}: {why}"
            for path in sorted(readable | {twistd, python, state})
            if (path == state or not path.is_relative_to(state))
            and (why := unreadable(path, account)) is not None
        ]
        if problems:
            raise ValueError(
                f"user {account.user} cannot read what the daemon needs: {'; '.join(problems)}"
            )
    say(f"write {unit_file}")
    if dry_run:
        print(unit, file=out, end="")
    else:
        unit_file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        unit_file.write_text(unit, encoding="utf-8")
        os.chmod(unit_file, _UNIT_MODE)
    name = kind.unit_name.removesuffix(".service")
    print("", file=out)
    print("Start it now and at every boot:", file=out)
    print(f"  systemctl daemon-reload && systemctl enable --now {name}", file=out)
    print(f"  journalctl -u {name} -f", file=out)
    return 0


def add_install_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register C{appproxy install service|connector}."""
    parser = subparsers.add_parser(
        "install",
        help="run the service or the connector under systemd (as root)",
        description=(
            "Create the system user, give it the keys its configuration names, create the "
            "state directory and write the systemd unit; run as root from the virtualenv "
            "appproxy is installed in, after 'appproxy init'."
        ),
    )
    which = parser.add_subparsers(title="daemons", metavar="DAEMON", required=True)
    for kind in _KINDS:
        sub = which.add_parser(kind.name, help=f"install {kind.unit_name}")
        sub.add_argument(
            "--config",
            default=str(kind.default.config),
            metavar="FILE",
            help=f"the {kind.name}'s configuration file (default: {kind.default.config})",
        )
        sub.add_argument(
            "--prefix",
            default=sys.prefix,
            metavar="DIR",
            help="the virtualenv holding bin/twistd (default: the one running this command)",
        )
        sub.add_argument(
            "--user",
            default=kind.default.user,
            help=f"the user the daemon runs as, created if missing (default: {kind.default.user})",
        )
        sub.add_argument(
            "--unit-dir",
            default=_UNIT_DIR,
            metavar="DIR",
            help=f"where the unit file goes (default: {_UNIT_DIR})",
        )
        sub.add_argument(
            "--dry-run", action="store_true", help="print the steps and the unit; change nothing"
        )
        sub.set_defaults(func=partial(_install, kind))
