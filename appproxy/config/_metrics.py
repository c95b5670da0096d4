"""
C{[metrics]}: where the service serves its Prometheus metrics (plain HTTP,
C{/metrics} only), never the public listener's or the tunnel's address.
"""

from __future__ import annotations

from appproxy.config._endpoint import _ENDPOINT_PARAMS, _parse_endpoint, endpoint
from appproxy.config._messages import quote
from appproxy.config._table import Table
from appproxy.config.model import MetricsConfig

_METRICS_KEYS = ("listen",)
#: Interfaces that mean "every address" (a listener there overlaps any other).
_ANY = ("", "0.0.0.0", "::")


def metrics(top: Table, listeners: dict[str, str]) -> MetricsConfig:
    """
    C{[metrics]}, if there is one; its C{listen} must not be the address of
    any of C{listeners} (configuration key -> endpoint string).
    """
    table = top.optional_table("metrics", _METRICS_KEYS)
    if table is None or not table.has("listen"):
        return MetricsConfig()
    listen = endpoint(
        table,
        "listen",
        "metrics are served over plain HTTP: use a tcp: endpoint on a private address",
    )
    for key, other in listeners.items():
        if _same_address(listen, other):
            table.fail(
                "listen",
                f"{quote(listen)} is the address of {key} ({quote(other)}):"
                " metrics need a listener of their own, never the public one",
            )
    return MetricsConfig(listen=listen)


def _address(value: str) -> tuple[str, str, str] | None:
    """(kind, interface, port) of a tcp or unix endpoint; L{None} for the others."""
    parsed = _parse_endpoint(value)
    if parsed is None:
        return None
    args, kwargs = parsed
    kind = args[0]
    if kind in ("tcp", "tcp6"):
        given = {**dict(zip(_ENDPOINT_PARAMS[kind], args[1:], strict=False)), **kwargs}
        return ("tcp", given.get("interface", ""), given.get("port", ""))
    if kind == "unix":
        given = {**dict(zip(("address",), args[1:], strict=False)), **kwargs}
        return ("unix", "", given.get("address", ""))
    return None


def _same_address(one: str, other: str) -> bool:
    """
    Whether two listeners would take the same address: the same socket path,
    or the same TCP port (not 0, a free one) on overlapping interfaces.
    """
    a, b = _address(one), _address(other)
    if a is None or b is None or a[0] != b[0]:
        return False
    if a[0] == "unix":
        return a[2] == b[2]
    if int(a[2]) != int(b[2]) or int(a[2]) == 0:
        return False
    return a[1] == b[1] or a[1] in _ANY or b[1] in _ANY
