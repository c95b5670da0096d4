"""
C{appproxy install service|connector}: make a host run a daemon under
systemd, in the spirit of C{cloudflared service install}. Run as root from
the virtualenv appproxy is installed in (C{/opt/appproxy/bin/appproxy}), after
C{appproxy init}:

  1. checks that C{PREFIX/bin/twistd} exists and that the daemon's
     configuration file is valid (the daemon's own loader);
  2. creates the system user (and its group) if missing;
  3. gives that group read access to the files the configuration names
     (keys become C{root:GROUP 0640}, directories C{root:GROUP 0750}) in the
     configuration's directory; other private files (the CA's key) stay
     C{root 0600};
  4. for the service, creates the state directory (C{service.state_dir}),
     owned by the user, mode 0700, and gives the user what root wrote there;
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
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, TextIO, cast

import attrs

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
_WORLD_READABLE = 0o004
_KEY_MODE = 0o640
_DIR_MODE = 0o750
_STATE_MODE = 0o700
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


@attrs.frozen
class _Account:
    """The daemon's user: its ids, or none yet (a dry run)."""

    user: str
    group: str
    uid: int | None
    gid: int | None


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


def _load(kind: _Kind, config: Path) -> tuple[Any, Path | None]:
    """The daemon's configuration, and the service's state directory."""
    from appproxy.config import ConfigError, load_connector_config, load_service_config

    try:
        if kind.name == "service":
            loaded: Any = load_service_config(config)
            return loaded, loaded.state_dir
        return load_connector_config(config), None
    except ConfigError as e:
        raise ValueError(str(e)) from None


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


def _account(name: str, dry_run: bool, say: Callable[[str], None]) -> _Account:
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
            return _Account(name, name, None, None)
        subprocess.run([*argv, name], check=True, stdin=subprocess.DEVNULL)  # noqa: S603
        entry = pwd.getpwnam(name)
    group = grp.getgrgid(entry.pw_gid).gr_name
    return _Account(name, group, entry.pw_uid, entry.pw_gid)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _grant(
    root: Path,
    readable: set[Path],
    skip: Path | None,
    account: _Account,
    dry_run: bool,
    say: Callable[[str], None],
) -> None:
    """
    Give C{account}'s group the directories under C{root} (the configuration
    file's) and the private files of C{readable} in them. Not C{skip} (the
    state directory) nor, for the service, a connector's directory (one
    holding C{connector.toml}): those are another install's.
    """
    say(f"{root}: directories root:{account.group} 0750; the keys the daemon reads 0640")
    for directory, dirnames, filenames in os.walk(root):
        here = Path(directory)
        if here == skip or (here != root and "connector.toml" in filenames):
            dirnames[:] = []
            continue
        if not dry_run:
            _set(here, account.gid, _DIR_MODE)
        for name in filenames:
            path = here / name
            mode = stat.S_IMODE(path.lstat().st_mode)
            if path.is_symlink() or path not in readable or mode & _WORLD_READABLE:
                continue
            say(f"  {path}: root:{account.group} 0640")
            if not dry_run:
                _set(path, account.gid, _KEY_MODE)


def _open_init_dir(
    config_dir: Path, account: _Account, dry_run: bool, say: Callable[[str], None]
) -> None:
    """
    A connector's directory inside the one C{appproxy init} made (mode 0700,
    root's): let the connector's group search that directory too, unless
    it already belongs to another group (the service's, another user).
    """
    parent = config_dir.parent
    if not (parent / "service.toml").is_file():
        return
    st = parent.stat()
    if st.st_mode & 0o001 or st.st_gid not in (0, account.gid):
        return
    say(f"{parent}: root:{account.group} 0750")
    if not dry_run:
        _set(parent, account.gid, _DIR_MODE)


def _set(path: Path, gid: int | None, mode: int) -> None:
    assert gid is not None
    os.chown(path, -1, gid, follow_symlinks=False)
    os.chmod(path, mode)


def _state_dir(state: Path, account: _Account, dry_run: bool, say: Callable[[str], None]) -> None:
    """C{state}, owned by the user, mode 0700, with what is in it."""
    say(f"{state}: {account.user}:{account.group} 0700 (the service's state)")
    if dry_run:
        return
    assert account.uid is not None and account.gid is not None
    state.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chown(state, account.uid, account.gid)
    os.chmod(state, _STATE_MODE)
    for directory, dirnames, filenames in os.walk(state):
        for name in dirnames + filenames:
            os.chown(Path(directory) / name, account.uid, account.gid, follow_symlinks=False)


def _unreadable(path: Path, account: _Account) -> str | None:
    """Why C{account} cannot read C{path} (permission bits), or L{None}."""
    assert account.uid is not None
    gids = set(os.getgrouplist(account.user, account.gid or 0))

    def allowed(st: os.stat_result, bit: int) -> bool:
        if st.st_uid == account.uid:
            return bool(st.st_mode & (bit << 6))
        if st.st_gid in gids:
            return bool(st.st_mode & (bit << 3))
        return bool(st.st_mode & bit)

    for parent in reversed(path.parents):
        if not allowed(parent.stat(), 0o1):
            return f"{parent} is not searchable"
    if not path.exists():
        return None
    return None if allowed(path.stat(), 0o4) else "it is not readable"


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
            state_dir=PurePosixPath(state) if state is not None else None,
        )
    )
    readable = {Path(os.path.normpath(path)) for path in _config_paths(loaded)}
    _grant(config.parent, readable, state, account, dry_run, say)
    if kind.name == "connector":
        _open_init_dir(config.parent, account, dry_run, say)
    if state is not None:
        _state_dir(state, account, dry_run, say)
    if not dry_run:
        problems = [
            f"{path}: {why}"
            for path in sorted(readable | {twistd, python})
            if (state is None or not path.is_relative_to(state))
            and (why := _unreadable(path, account)) is not None
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
