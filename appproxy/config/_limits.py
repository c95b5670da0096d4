"""
C{[limits]}: the public listener's abuse limits (request budgets per
address, connection caps, the queue cap) and the data-path limits (header
deadline, body rate, HTTP/2 frame budgets).  The data-path keys were
C{[service]} keys before; there they are still accepted, but not in both
tables at once.
"""

from __future__ import annotations

from appproxy.config._messages import number, type_name
from appproxy.config._table import MISSING, Table
from appproxy.config.model import ClientLimits, LimitsConfig

__all__ = ["LIMITS_KEYS", "MOVED_KEYS", "limits"]

#: The data-path keys that moved from C{[service]} to C{[limits]}.
MOVED_KEYS = (
    "client_header_timeout",
    "client_body_min_rate",
    "client_header_connections_per_address",
)
#: Every key of C{[limits]}.
LIMITS_KEYS = (
    "anonymous_rate",
    "anonymous_burst",
    "signin_rate",
    "signin_burst",
    "signed_in_rate",
    "signed_in_burst",
    "tracked_addresses",
    "connections_per_address",
    "connections_total",
    "queued_per_group",
    *MOVED_KEYS,
    "h2_empty_data_burst",
    "h2_empty_data_rate",
    "h2_reset_burst",
    "h2_reset_rate",
)
_DEFAULT = LimitsConfig()
_CLIENT = ClientLimits()


def _rate(table: Table, name: str, default: float) -> float:
    """Requests per second, 0 (no limit) up to a million."""
    value = table.get(name)
    if value is MISSING:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        table.fail(name, f"must be a number, not {type_name(value)}")
    if not 0 <= value <= 1_000_000:
        table.fail(name, f"must be from 0 (no limit) to 1000000, not {number(value)}")
    return float(value)


def limits(top: Table, service: Table) -> tuple[ClientLimits, LimitsConfig]:
    """The data-path limits and the abuse limits, from C{[limits]} (and C{[service]})."""
    table = top.optional_table("limits", LIMITS_KEYS)

    def moved(name: str) -> Table:
        """Where a data-path key is: C{[limits]}, or C{[service]} (older files)."""
        if table is None or not table.has(name):
            return service
        if service.has(name):
            table.fail(
                name,
                f"is also given as service.{name}: keep only [limits] {name}"
                " ([service] accepts it for older files)",
            )
        return table

    client = ClientLimits(
        header_timeout=moved("client_header_timeout").number(
            "client_header_timeout", _CLIENT.header_timeout, 3600.0
        ),
        body_min_rate=moved("client_body_min_rate").integer(
            "client_body_min_rate", _CLIENT.body_min_rate, 0, 1 << 30
        ),
        header_connections_per_address=moved("client_header_connections_per_address").integer(
            "client_header_connections_per_address",
            _CLIENT.header_connections_per_address,
            1,
            100_000,
        ),
        websockets_per_user=service.integer(
            "websockets_per_user", _CLIENT.websockets_per_user, 0, 100_000
        ),
        h2_empty_data_burst=_CLIENT.h2_empty_data_burst
        if table is None
        else table.integer("h2_empty_data_burst", _CLIENT.h2_empty_data_burst, 1, 1_000_000),
        h2_empty_data_rate=_CLIENT.h2_empty_data_rate
        if table is None
        else table.number("h2_empty_data_rate", _CLIENT.h2_empty_data_rate, 1_000_000.0),
        h2_reset_burst=_CLIENT.h2_reset_burst
        if table is None
        else table.integer("h2_reset_burst", _CLIENT.h2_reset_burst, 1, 1_000_000),
        h2_reset_rate=_CLIENT.h2_reset_rate
        if table is None
        else table.number("h2_reset_rate", _CLIENT.h2_reset_rate, 1_000_000.0),
    )
    if table is None:
        return client, _DEFAULT
    burst_max = 1_000_000
    return client, LimitsConfig(
        anonymous_rate=_rate(table, "anonymous_rate", _DEFAULT.anonymous_rate),
        anonymous_burst=table.integer("anonymous_burst", _DEFAULT.anonymous_burst, 1, burst_max),
        signin_rate=_rate(table, "signin_rate", _DEFAULT.signin_rate),
        signin_burst=table.integer("signin_burst", _DEFAULT.signin_burst, 1, burst_max),
        signed_in_rate=_rate(table, "signed_in_rate", _DEFAULT.signed_in_rate),
        signed_in_burst=table.integer("signed_in_burst", _DEFAULT.signed_in_burst, 1, burst_max),
        tracked_addresses=table.integer(
            "tracked_addresses", _DEFAULT.tracked_addresses, 1, 10_000_000
        ),
        connections_per_address=table.integer(
            "connections_per_address", _DEFAULT.connections_per_address, 1, 1_000_000
        ),
        connections_total=table.integer(
            "connections_total", _DEFAULT.connections_total, 1, 10_000_000
        ),
        queued_per_group=table.integer("queued_per_group", _DEFAULT.queued_per_group, 1, 1_000_000),
    )
