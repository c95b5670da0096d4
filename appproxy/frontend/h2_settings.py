"""
h2's settings of an idle HTTP/2 client connection, shared.

h2's L{Settings} keeps a table per connection and per end: each setting's
values (the current one, then those proposed and not yet acknowledged), about
1 KiB per table even in lists (L{appproxy.frontend.h2_compact}).  Nearly all
connections hold the same values: the service's own settings, and what each
kind of browser sends.  L{SharedSettings} keeps a settled table (no change in
flight) in a table shared by every connection with the same values, and takes
a table of its own again before any change (copy on write): the same values,
the same acknowledgements, the same refusals of invalid values as h2's.

Which tables are shared is bounded (L{SHARED_LIMIT} of them, the first
seen): a client sending unusual values keeps its connection's own table.

And the windows a client may send request bodies into
(L{widen_receive_windows}): h2's default, 64 KiB for the connection and
for each stream, paces an upload to 64 KiB per round trip (1.3 MB/s at
50 ms), and a browser's uploads all go over HTTP/2.  L{STREAM_WINDOW} per
stream and L{CONNECTION_WINDOW} in all, as Go's HTTP/2 server allows about
1 MiB: what a client may have sent that the service holds, while the
tunnel cannot take it yet, is at most the connection's window (an HTTP/1.1
client's body waits in the kernel's socket buffer instead).
"""

from __future__ import annotations

from typing import Any

from h2.settings import ChangedSetting, SettingCodes, Settings

from appproxy.frontend.h2_compact import CompactSettings, ListDeque, compact_settings

__all__ = [
    "CONNECTION_WINDOW",
    "SHARED_LIMIT",
    "STREAM_WINDOW",
    "SharedSettings",
    "share_settings",
    "widen_receive_windows",
]

#: At most this many distinct settled tables are shared.
SHARED_LIMIT = 256

#: The window a client may send each request body into (SETTINGS_INITIAL_WINDOW_SIZE).
STREAM_WINDOW = 256 * 1024
#: The window a client may send all its request bodies into.
CONNECTION_WINDOW = 512 * 1024
#: h2's (and RFC 9113's) initial windows.
_DEFAULT_WINDOW = 65535

#: The settled tables in use, by their values.
_SHARED: dict[tuple[tuple[int, int], ...], dict[Any, ListDeque]] = {}


def _settled(table: dict[Any, ListDeque]) -> dict[Any, ListDeque] | None:
    """The shared table with C{table}'s values, if it has no change in flight."""
    key = []
    for code, values in table.items():
        if len(values) != 1 or values[0] is None:
            return None
        key.append((int(code), values[0]))
    frozen = tuple(key)
    shared = _SHARED.get(frozen)
    if shared is None:
        if len(_SHARED) >= SHARED_LIMIT:
            return None
        # Values never changed in place: each list is the one its table holds.
        shared = _SHARED[frozen] = {code: ListDeque(values) for code, values in table.items()}
    return shared


class SharedSettings(CompactSettings):
    """L{CompactSettings} whose settled table is shared (see the module docstring)."""

    _shared = False

    def _own(self) -> None:
        """Take a table of our own before changing it."""
        if self._shared:
            own = {code: ListDeque(values) for code, values in self._settings.items()}
            self._settings = own  # type: ignore[assignment]
            self._shared = False

    def _share(self) -> None:
        if not self._shared:
            shared = _settled(self._settings)  # type: ignore[arg-type]
            if shared is not None:
                self._settings = shared  # type: ignore[assignment]
                self._shared = True

    def __setitem__(self, key: SettingCodes | int, value: int) -> None:
        self._own()
        super().__setitem__(key, value)

    def __delitem__(self, key: SettingCodes | int) -> None:
        self._own()
        super().__delitem__(key)

    def acknowledge(self) -> dict[SettingCodes | int, ChangedSetting]:
        if self._shared:
            return {}  # settled: nothing in flight to apply
        changed = super().acknowledge()
        self._share()
        return changed


def share_settings(settings: Settings) -> None:
    """Make C{settings} a L{SharedSettings} (in place), sharing its table if settled."""
    compact_settings(settings)
    settings.__class__ = SharedSettings
    settings._share()  # type: ignore[attr-defined]


def widen_receive_windows(conn: Any) -> None:
    """
    Offer C{conn}'s client (h2's connection, its initial SETTINGS sent with
    h2's defaults) L{STREAM_WINDOW} per stream, from its next SETTINGS
    acknowledgement on, and L{CONNECTION_WINDOW} in all, at once.
    """
    conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
    conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
