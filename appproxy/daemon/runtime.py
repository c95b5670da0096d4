"""
What both daemons share: their twistd options (C{--config PATH}), loading the
configuration at start (one clear line and exit status 78 on a bad file),
reloading it on SIGHUP (a bad file is refused and the running one kept),
systemd notifications and log output.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from twisted.logger import ILogObserver, Logger, jsonFileLogObserver
from twisted.python import usage

from appproxy.config import ConfigError
from appproxy.daemon import sdnotify
from appproxy.daemon.text_log import text_observer

#: sysexits.h EX_CONFIG; the systemd units do not restart on it.
EX_CONFIG = 78

T = TypeVar("T")


class _Reloadable(Protocol):
    def reload(self) -> None: ...


S = TypeVar("S", bound=_Reloadable)


def config_options(daemon: str, default_path: str) -> type[usage.Options]:
    """
    The twistd options of a daemon: its configuration file, C{--config PATH}
    (or C{-c PATH}), C{default_path} when not given.

    @param daemon: what the file configures (C{"service"}), for C{--help}.
    """

    class Options(usage.Options):
        synopsis = "--config PATH"
        optParameters = [
            ["config", "c", default_path, f"The {daemon} configuration file (TOML)."],
        ]

    return Options


def make_daemon(options: usage.Options, build: Callable[[Path, Any], S]) -> S:
    """
    A twistd plugin's C{makeService}: C{build(path, reactor)} the service
    from the C{--config} file, stopping the daemon with one line if the
    configuration (or the state it names) is bad, and reload it on SIGHUP.
    The reactor is L{appproxy.daemon.reactor}'s unless twistd was told
    which to use (C{--reactor}).
    """
    from appproxy.daemon.reactor import install

    reactor = install()

    global _server_options
    # twistd's own options (a subcommand's options' parent): where it logs.
    _server_options = getattr(options, "parent", None)
    service = load_or_exit(lambda path: build(path, reactor), options["config"])
    on_sighup(reactor, service.reload)
    return service


def reload_or_keep(log: Logger, load: Callable[[], T], apply: Callable[[T], None]) -> None:
    """
    Reload a daemon's configuration, telling systemd (C{RELOADING=1}, then
    C{READY=1}): C{load()} reads the file and builds all that the new
    configuration needs; if it raises L{ConfigError} or L{ValueError} the
    reload is refused and the running configuration stays, otherwise
    C{apply} puts the result in place.
    """
    notify(b"RELOADING=1")
    try:
        loaded = load()
    except (ConfigError, ValueError) as e:
        log.error("Reload refused, the running configuration stays: {error}", error=str(e))
    else:
        apply(loaded)
    notify(b"READY=1")


def load_or_exit(loader: Callable[[Path], T], path: str, stderr: IO[str] | None = None) -> T:
    """
    Load a configuration file, or stop the daemon with one line that names
    the file, the key and the problem.
    """
    try:
        return loader(Path(path))
    except ConfigError as e:
        (stderr or sys.stderr).write(f"appproxy: configuration error: {e}\n")
        raise SystemExit(EX_CONFIG) from None


def notify(state: bytes) -> None:
    sdnotify.notify(state)


#: twistd's options of this process (one daemon per process), for its log.
_server_options: Any = None


def use_log_format(parent: Any, log_format: str) -> None:
    """
    Give twistd's application the configured log observer: twistd asks the
    application for an C{ILogObserver} when it starts logging (unless
    C{--logger} was given, which wins).  The text format's is
    L{appproxy.daemon.text_log}'s: twistd's lines, where twistd would write
    them, at less cost per line.
    """
    if not hasattr(parent, "setComponent") or parent.getComponent(ILogObserver, None):
        return
    if log_format == "json":
        parent.setComponent(ILogObserver, json_observer())
        return
    observer = text_observer(_server_options)
    if observer is not None:
        parent.setComponent(ILogObserver, observer)


def on_sighup(reactor: Any, reload: Callable[[], object]) -> None:
    """
    Run C{reload} in the reactor thread on SIGHUP (C{systemctl reload}).
    """
    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))


def json_observer() -> ILogObserver:
    """
    A log observer writing one JSON object per line to standard output, for
    C{twistd --logger appproxy.daemon.runtime.json_observer}.
    """
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
