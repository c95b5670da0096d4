"""
The files a daemon installed by C{appproxy install} uses: who owns them and
their modes (L{Account}, the daemon's user), and whether that user can read
them. Used by L{appproxy.cli.install}.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import attrs

__all__ = [
    "Account",
    "check_connector_dir",
    "grant",
    "open_init_dir",
    "state_dir",
    "unreadable",
]

_WORLD_READABLE = 0o004
_KEY_MODE = 0o640
_DIR_MODE = 0o750
_STATE_MODE = 0o700
_PRIVATE_MODE = 0o600


@attrs.frozen
class Account:
    """The daemon's user: its ids, or none yet (a dry run)."""

    user: str
    group: str
    uid: int | None
    gid: int | None


def check_connector_dir(config: Path, cert: Path, key: Path) -> None:
    """
    The directory of the connector's configuration becomes its state (its
    user's, writable): it must not be the service's, and it must hold the
    certificate and the key renewal replaces (the unit's one writable path).
    """
    directory = config.parent
    if (directory / "service.toml").exists():
        raise ValueError(
            f"{directory} holds service.toml: the connector's directory becomes its own "
            "(owned by its user, who renews its key there); give connector.toml a directory "
            "of its own, such as /var/lib/appproxy-connector"
        )
    for what, named in (("certificate", cert), ("key", key)):
        path = Path(os.path.normpath(named))
        if path.parent != directory:
            raise ValueError(
                f"the connector's {what} {path} is not in {directory}, the directory of its "
                "configuration, the one place the unit lets the connector write: move it "
                "there, or renewal cannot replace it"
            )


def grant(
    root: Path,
    readable: set[Path],
    skip: Path | None,
    account: Account,
    dry_run: bool,
    say: Callable[[str], None],
) -> None:
    """
    Give C{account}'s group the directories under C{root} (the configuration
    file's) and the private files of C{readable} in them (the service's
    install). Not C{skip} (the state directory) nor a connector's directory
    (one holding C{connector.toml}): those are their daemon's own.
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


def open_init_dir(
    config_dir: Path, account: Account, dry_run: bool, say: Callable[[str], None]
) -> None:
    """
    A connector's directory inside the one C{appproxy init} made (mode 0700,
    root's): let the connector's group search that directory too, unless
    it already belongs to another group (the service's, another user). The
    connector's directory itself becomes its user's (L{state_dir}), as
    anywhere else: the service reads nothing in it, and C{appproxy install
    service} leaves it alone.
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


def state_dir(
    state: Path,
    account: Account,
    dry_run: bool,
    say: Callable[[str], None],
    *,
    what: str = "the service's state",
    private: frozenset[Path] = frozenset(),
) -> None:
    """
    C{state}, owned by the user, mode 0700, with what is in it; the files of
    C{private} there (keys) 0600.
    """
    say(f"{state}: {account.user}:{account.group} 0700 ({what})")
    keys = sorted(path for path in private if path.is_file() and not path.is_symlink())
    for path in keys:
        say(f"  {path}: {account.user}:{account.group} 0600")
    if dry_run:
        return
    assert account.uid is not None and account.gid is not None
    state.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chown(state, account.uid, account.gid)
    os.chmod(state, _STATE_MODE)
    for directory, dirnames, filenames in os.walk(state):
        for name in dirnames + filenames:
            os.chown(Path(directory) / name, account.uid, account.gid, follow_symlinks=False)
    for path in keys:
        os.chmod(path, _PRIVATE_MODE)


def unreadable(path: Path, account: Account) -> str | None:
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
