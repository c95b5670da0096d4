"""
Conditional access in the service's file: C{[risk]} (sign-in risk
detection), C{[[locations]]} (named networks) and C{[[policies]]}.
"""

from __future__ import annotations

from collections.abc import Set

from appproxy.access.policy import NamedLocation, Policy, unknown_locations
from appproxy.access.risk import ANONYMIZER, FAILED_SIGN_INS
from appproxy.config._messages import number, one_of, quote
from appproxy.config._table import Table
from appproxy.config._values import networks
from appproxy.config.model import RiskConfig

_RISK_KEYS = ("failed_sign_in_limit", "failed_sign_in_window", "anonymizers")
_LOCATION_KEYS = ("name", "networks")
_POLICY_KEYS = (
    "name",
    "apps",
    "exclude_apps",
    "users",
    "groups",
    "exclude_users",
    "exclude_groups",
    "locations",
    "exclude_locations",
    "risks",
    "grant",
    "sign_in_frequency",
)
_RISK_SIGNALS = (FAILED_SIGN_INS, ANONYMIZER)
_GRANTS = ("block", "mfa")


def risk(top: Table) -> RiskConfig:
    """C{[risk]}, or its defaults."""
    table = top.optional_table("risk", _RISK_KEYS)
    if table is None:
        return RiskConfig()
    window = table.get("failed_sign_in_window")
    if isinstance(window, int | float) and not isinstance(window, bool) and 0 < window < 1:
        # The built-in provider counts whole seconds.
        table.fail(
            "failed_sign_in_window", f"must be at least 1 and at most 86400, not {number(window)}"
        )
    anonymizers = table.path("anonymizers") if table.has("anonymizers") else None
    if anonymizers is not None and not anonymizers.is_file():
        table.fail("anonymizers", f"{quote(str(anonymizers))} is not a readable file")
    return RiskConfig(
        failed_sign_in_limit=table.integer("failed_sign_in_limit", 5, 1, 1000),
        failed_sign_in_window=table.number("failed_sign_in_window", 600.0, 86400.0),
        anonymizers=anonymizers,
    )


def locations(top: Table) -> tuple[NamedLocation, ...]:
    """C{[[locations]]}: named networks, each name once."""
    result: list[NamedLocation] = []
    for table in top.optional_tables("locations", _LOCATION_KEYS):
        name = table.name("name")
        if any(location.name == name for location in result):
            table.fail("name", f"{quote(name)} is already used by another location")
        found = networks(table, "networks")
        if not found:
            table.fail("networks", "must list at least one network (for example 10.0.0.0/8)")
        result.append(NamedLocation(name=name, networks=found))
    return tuple(result)


def policies(top: Table, apps: Set[str], locations: Set[str]) -> tuple[Policy, ...]:
    """C{[[policies]]}, naming only the given apps and locations (or C{*})."""
    result: list[Policy] = []
    known_locations = {
        location: NamedLocation(name=location, networks=()) for location in locations
    }
    for table in top.optional_tables("policies", _POLICY_KEYS):
        name = table.name("name")
        if any(policy.name == name for policy in result):
            table.fail("name", f"{quote(name)} is already used by another policy")
        for key in ("apps", "exclude_apps"):
            for index, app in enumerate(table.string_list(key)):
                if app != "*" and app not in apps:
                    table.fail_item(
                        key, index, f"there is no app named {quote(app)} (use '*' for every app)"
                    )
        risks = table.string_list("risks")
        for index, signal in enumerate(risks):
            if signal not in _RISK_SIGNALS:
                table.fail_item(
                    "risks", index, f"must be {one_of(_RISK_SIGNALS)}, not {quote(signal)}"
                )
        grant = table.choice("grant", _GRANTS, "block") if table.has("grant") else None
        frequency = (
            table.integer("sign_in_frequency", 3600, 60, 90 * 24 * 3600)
            if table.has("sign_in_frequency")
            else None
        )
        if grant is None and frequency is None:
            table.fail("grant", "is required ('block' or 'mfa'), unless sign_in_frequency is set")
        policy = Policy(
            name=name,
            apps=table.string_list("apps", ("*",)),
            exclude_apps=table.string_list("exclude_apps"),
            users=table.string_list("users"),
            groups=table.string_list("groups"),
            exclude_users=table.string_list("exclude_users"),
            exclude_groups=table.string_list("exclude_groups"),
            locations=table.string_list("locations", ("*",)),
            exclude_locations=table.string_list("exclude_locations"),
            risks=risks,
            grant=grant,
            sign_in_frequency=frequency,
        )
        missing = unknown_locations(policy, known_locations)
        if missing:
            key = "locations" if missing[0] in policy.locations else "exclude_locations"
            table.fail(
                key,
                f"there is no [[locations]] entry named {quote(missing[0])} (use '*' for anywhere)",
            )
        result.append(policy)
    return tuple(result)
