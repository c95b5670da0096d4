"""
What the command groups share on their command lines: argument types
(argparse C{type=} callables), and which service a command works on
(L{add_state_options}, L{resolve_state} -> L{ServiceFiles}).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from appproxy.config import ServiceConfig


def at_least(minimum: int, *, unit: str = "") -> WholeNumber:
    """
    An argparse type: a whole number no smaller than C{minimum}.

    @param unit: what the number counts (C{"seconds"}), named in the error.
    """
    return WholeNumber(minimum, unit)


@attrs.frozen
class WholeNumber:
    """A whole number of at least C{minimum}, as an argparse type."""

    minimum: int
    unit: str

    def __call__(self, value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            what = f"a whole number of {self.unit}" if self.unit else "a whole number"
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
        if number < self.minimum:
            if self.minimum == 0:
                raise argparse.ArgumentTypeError(f"{value!r} is negative")
            raise argparse.ArgumentTypeError(f"{value!r} must be at least {self.minimum}")
        return number


def comma_list(value: str) -> list[str]:
    """A comma-separated list on the command line; empty items dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


# ---------------------------------------------------------------------------
# Which service a command works on: --state-dir DIR or --config FILE.

#: The service's configuration file in the directory C{appproxy init} made.
SERVICE_CONFIG_NAME: Final = "service.toml"

_GIVE = (
    "give the directory 'appproxy init' made (it holds service.toml), "
    "or the service's configuration file with --config FILE"
)


@attrs.frozen(kw_only=True)
class ServiceFiles:
    """
    The files of one service, as the service itself finds them: all from its
    configuration file, loaded by L{appproxy.config.load_service_config}.

    @ivar config: the service's configuration.
    @ivar config_file: its file, absolute.
    @ivar state_dir: C{service.state_dir}, the directory the service keeps its
        state in.
    @ivar keyring: the session cookie key ring the service reads.
    @ivar database: the state database (sign-in log, sessions).
    """

    config: ServiceConfig
    config_file: Path
    state_dir: Path
    keyring: Path
    database: Path

    @property
    def users_file(self) -> Path:
        """
        The built-in provider's users file, C{[builtin_provider] users_file}.

        @raise ValueError: (one line) if the service has no built-in provider.
        """
        builtin = self.config.builtin_provider
        if builtin is None:
            raise ValueError(
                f"{self.config_file} has no [builtin_provider]: the service signs users in "
                "with an external OpenID provider; manage the users there"
            )
        return builtin.users_file

    def existing_state_dir(self) -> Path:
        """
        L{state_dir}, for a command that writes into it.

        @raise ValueError: (one line) if it does not exist.
        """
        if not self.state_dir.is_dir():
            raise ValueError(
                f"{self.state_dir} (service.state_dir in {self.config_file}) does not exist "
                "or is not a directory: create it (owned by the service's user, mode 0700) "
                "or start the service once"
            )
        return self.state_dir


def hand_over(path: Path) -> None:
    """
    Give a file a command has just written (the users file, the key ring) to
    the owner and group of the directory it is in (the service's user, in a
    state directory C{appproxy install} made), when the command runs as
    root: the service, running as its own user, must still read it.  As any
    other user, or when they already match, nothing changes.
    """
    if os.geteuid() != 0:
        return
    directory = path.parent.stat()
    written = path.stat()
    if (written.st_uid, written.st_gid) != (directory.st_uid, directory.st_gid):
        os.chown(path, directory.st_uid, directory.st_gid)


def add_state_options(parser: argparse.ArgumentParser) -> None:
    """
    Add the required choice C{--state-dir DIR | --config FILE}: which
    service a command works on (read back with L{resolve_state}).
    """
    group = parser.add_argument_group(
        "the service (one of)",
        "Every file is found from the service's configuration, as the service finds it.",
    )
    which = group.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"the directory 'appproxy init' made (it holds {SERVICE_CONFIG_NAME})",
    )
    which.add_argument(
        "--config",
        metavar="FILE",
        help="the service's configuration file (as given to 'twistd appproxy --config')",
    )


def config_path(args: argparse.Namespace) -> Path:
    """
    The service's configuration file named by L{add_state_options}'
    arguments: C{--config FILE}, or C{DIR/service.toml} for C{--state-dir DIR}.

    @raise ValueError: (one line: what directory, what is missing, what to
        do) if C{DIR} is not a directory holding C{service.toml}.
    """
    if args.config is not None:
        return Path(args.config)
    directory = Path(args.state_dir).absolute()
    if directory.is_file():
        raise ValueError(
            f"--state-dir {directory} is a file, not a directory: "
            f"for the service's configuration file use --config {directory}"
        )
    if not directory.is_dir():
        raise ValueError(f"--state-dir {directory}: no such directory; {_GIVE}")
    path = directory / SERVICE_CONFIG_NAME
    if path.is_file():
        return path
    if (directory.parent / SERVICE_CONFIG_NAME).is_file():
        raise ValueError(
            f"--state-dir {directory} holds no {SERVICE_CONFIG_NAME}, its parent does: "
            f"use --state-dir {directory.parent}"
        )
    raise ValueError(
        f"--state-dir {directory} holds no {SERVICE_CONFIG_NAME}, so it is not a directory "
        f"'appproxy init' made: give that directory, or the service's configuration file "
        "with --config FILE"
    )


def resolve_state(args: argparse.Namespace) -> ServiceFiles:
    """
    Load the service's configuration named by L{add_state_options}'
    arguments and find its files.

    @raise ValueError: (one line) as L{config_path}, or if the configuration
        is not valid (L{ConfigError}'s message: file, key, problem).
    """
    from appproxy.access.keyring_file import KEYRING_FILENAME
    from appproxy.config import ConfigError, load_service_config
    from appproxy.state.schema import DATABASE_NAME

    path = config_path(args)
    try:
        config = load_service_config(path)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    state_dir = config.state_dir
    return ServiceFiles(
        config=config,
        config_file=path.absolute(),
        state_dir=state_dir,
        keyring=state_dir / KEYRING_FILENAME,
        database=state_dir / DATABASE_NAME,
    )
