"""
What the admin page shows, as one JSON document (C{/admin/v1/overview}):
connectors with their status, connector groups and apps from the
configuration, the last sign-ins, the last refused sign-ins and the last
audit events (newest first).  Blocking C{sqlite3} calls for the connection
pool's thread; pure otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from appproxy.admin.records import _COLUMNS, _audit, _sign_in
from appproxy.config.model import AppConfig
from appproxy.state.connectors import list_connectors
from appproxy.state.signins import format_time

__all__ = ["LAST", "read_overview"]

#: How many of the last sign-ins, refusals and audit events are shown.
LAST: Final = 20


def _connector(record: Any, now: float, inactive_after: float) -> dict[str, Any]:
    return {
        "id": record.id,
        "group": record.group,
        "host_name": record.host_name,
        "version": record.version,
        "status": record.status(now, inactive_after),
        "last_seen": None if record.last_seen is None else format_time(record.last_seen),
        "last_address": record.last_address,
        "connections": record.connections,
        "streams": record.streams,
        "certificate_expires": format_time(record.not_after),
    }


def _apps(apps: Sequence[AppConfig]) -> list[dict[str, Any]]:
    return [
        {
            "name": app.name,
            "external_url": app.external_url,
            "group": app.connector_group,
            "pre_authentication": app.pre_authentication,
        }
        for app in apps
    ]


def read_overview(
    txn: Any, apps: Sequence[AppConfig], now: float, inactive_after: float
) -> dict[str, Any]:
    """The page's data, read in one transaction."""
    connectors = [_connector(r, now, inactive_after) for r in list_connectors(txn)]
    groups: dict[str, dict[str, Any]] = {}
    for app in apps:
        groups.setdefault(app.connector_group, {"apps": [], "connectors": []})
        groups[app.connector_group]["apps"].append(app.name)
    for connector in connectors:
        entry = groups.setdefault(connector["group"], {"apps": [], "connectors": []})
        entry["connectors"].append(connector["id"])
    txn.execute(
        f"SELECT {_COLUMNS['sign-ins']} FROM sign_ins ORDER BY id DESC LIMIT ?",  # noqa: S608
        (LAST,),
    )
    sign_ins = [_sign_in(row) for row in txn.fetchall()]
    txn.execute(
        f"SELECT {_COLUMNS['sign-ins']} FROM sign_ins"  # noqa: S608
        " WHERE result NOT IN ('success', 'signed-out') ORDER BY id DESC LIMIT ?",
        (LAST,),
    )
    refusals = [_sign_in(row) for row in txn.fetchall()]
    txn.execute(f"SELECT {_COLUMNS['audit']} FROM audit ORDER BY id DESC LIMIT ?", (LAST,))  # noqa: S608
    audit = [_audit(row) for row in txn.fetchall()]
    return {
        "time": format_time(now),
        "connectors": connectors,
        "groups": [_group(name, entry) for name, entry in sorted(groups.items())],
        "apps": _apps(apps),
        "sign_ins": sign_ins,
        "refusals": refusals,
        "audit": audit,
    }


def _group(name: str, entry: Mapping[str, list[str]]) -> dict[str, Any]:
    return {"name": name, "apps": entry["apps"], "connectors": entry["connectors"]}
