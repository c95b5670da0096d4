"""
Events as RFC 5424 syslog lines, for collectors that take syslog.

One line per event::

    <PRI>1 TIMESTAMP HOSTNAME appproxy PROCID MSGID [appproxy@32473 ...] BOM JSON

C{PRI} is facility C{authpriv} (10) with severity C{info} (6) for a
success or sign-out, C{notice} (5) for other audit events, C{warning} (4)
for a refusal or failure.  C{MSGID} is the event's stable id, unique across
both lists (C{sign-in-17}, C{audit-4}), so a collector can drop duplicates.
The structured data element C{appproxy@32473} (32473: the enterprise number
RFC 5612 reserves for examples) repeats the id and the main fields; the
message is the event's JSON object, UTF-8 after a byte order mark (RFC 5424
C{MSG-UTF8}).  Lines end with LF (RFC 6587's non-transparent framing).
Pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["APP_NAME", "SD_ID", "message_id", "syslog_line"]

#: C{APP-NAME}.
APP_NAME: Final = "appproxy"
#: The structured data element's id.
SD_ID: Final = "appproxy@32473"
_AUTHPRIV: Final = 10
_WARNING, _NOTICE, _INFO = 4, 5, 6
_QUIET: Final = frozenset({"success", "signed-out"})
_SD_FIELDS: Final = {
    "sign-ins": ("result", "reason", "user", "app", "client_address", "request_id"),
    "audit": ("event", "actor", "address", "connector_id"),
}
_PREFIX: Final = {"sign-ins": "sign-in", "audit": "audit"}
_BOM: Final = "\ufeff"


def message_id(kind: str, event: Mapping[str, Any]) -> str:
    """The event's id across both lists: C{sign-in-ID} or C{audit-ID}."""
    return f"{_PREFIX[kind]}-{event['id']}"


def _severity(kind: str, event: Mapping[str, Any]) -> int:
    if kind == "sign-ins":
        return _INFO if event.get("result") in _QUIET else _WARNING
    name = str(event.get("event", ""))
    return _WARNING if "refused" in name or name == "clone-suspected" else _NOTICE


def _header_field(text: str, limit: int) -> str:
    """C{text} as PRINTUSASCII (33-126), at most C{limit} characters; C{-} if empty."""
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return cleaned or "-"


def _param_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = "".join(c if c.isprintable() else "\ufffd" for c in text[:512])
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_line(kind: str, event: Mapping[str, Any], *, hostname: str, procid: int) -> str:
    """The RFC 5424 line (LF-terminated) of an event of the list C{kind}."""
    pri = _AUTHPRIV * 8 + _severity(kind, event)
    msgid = message_id(kind, event)
    params = [f'id="{_param_value(msgid)}"']
    params += [
        f'{name}="{_param_value(event[name])}"'
        for name in _SD_FIELDS[kind]
        if event.get(name) is not None
    ]
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    body = body.encode("utf-8", "replace").decode("utf-8")
    return (
        f"<{pri}>1 {event['time']} {_header_field(hostname, 255)} {APP_NAME}"
        f" {_header_field(str(procid), 128)} {_header_field(msgid, 32)}"
        f" [{SD_ID} {' '.join(params)}] {_BOM}{body}\n"
    )
