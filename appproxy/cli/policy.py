"""
C{appproxy policy what-if}: the decision conditional access would make for a
hypothetical sign-in, from the service's configuration (C{--config FILE}, or
C{--state-dir DIR}: the directory C{appproxy init} made).

The report itself is L{appproxy.access.what_if.what_if}; this module parses the
command line, reads the configuration and prints.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable, Mapping
from typing import TextIO

from appproxy.access.policy import Assignment, PolicySet
from appproxy.access.risk import RISK_SIGNALS
from appproxy.access.what_if import what_if
from appproxy.cli.arguments import add_state_options, at_least, comma_list, config_path

__all__ = ["LoadConfig", "add_policy_command", "load_policies"]

#: Loads a service configuration file: its policies and each app's assignment.
LoadConfig = Callable[[str], tuple[PolicySet, Mapping[str, Assignment]]]


def load_policies(path: str) -> tuple[PolicySet, Mapping[str, Assignment]]:
    """
    The policies and assignments of the service configuration file C{path}.

    @raise ValueError: (one line) if the file is not a valid configuration.
    """
    from appproxy.config import ConfigError, load_service_config
    from appproxy.gate.setup import policy_set

    try:
        config = load_service_config(path)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    return policy_set(config), {app.name: app.assignment for app in config.apps}


def add_policy_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], load_config: LoadConfig
) -> None:
    """
    Add C{appproxy policy what-if} to the C{appproxy} command.

    @param load_config: reads the service configuration file named by
        C{--config FILE} or C{--state-dir DIR}; it raises L{ValueError} or
        L{OSError} with a one-line message on a bad file.
    """
    parser = subparsers.add_parser(
        "policy",
        help="inspect conditional-access policies",
        description="Inspect the conditional-access policies of a service configuration.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    what = commands.add_parser(
        "what-if",
        help="show the decision for a hypothetical sign-in",
        description=(
            "Evaluate the service configuration's assignments and conditional-access "
            "policies for a hypothetical sign-in, and show which policies apply and why."
        ),
    )
    add_state_options(what)
    what.add_argument("--user", required=True, help="the user name")
    what.add_argument(
        "--groups", default="", metavar="G,H", help="the user's groups, comma-separated"
    )
    what.add_argument("--app", required=True, help="the app's name")
    what.add_argument("--ip", required=True, metavar="ADDR", help="the client's IP address")
    what.add_argument(
        "--amr",
        default="pwd",
        metavar="M,N",
        help="authentication methods, comma-separated (default: pwd)",
    )
    what.add_argument("--acr", default=None, help="authentication context class")
    what.add_argument(
        "--auth-age",
        type=at_least(0, unit="seconds"),
        default=0,
        metavar="SECONDS",
        help="how long ago the user signed in (default: 0)",
    )
    what.add_argument(
        "--risk",
        action="append",
        default=[],
        choices=sorted(RISK_SIGNALS),
        help="a risk signal present (repeatable)",
    )
    what.set_defaults(func=_cmd_what_if, load_policy_config=load_config)


def _cmd_what_if(args: argparse.Namespace, out: TextIO) -> int:
    load_config: LoadConfig = args.load_policy_config
    try:
        ip = ipaddress.ip_address(args.ip)
    except ValueError:
        raise ValueError(f"--ip: {args.ip!r} is not an IP address") from None
    policies, assignments = load_config(str(config_path(args)))
    out.write(
        what_if(
            policies,
            assignments,
            user=args.user,
            groups=comma_list(args.groups),
            app=args.app,
            ip=ip,
            amr=comma_list(args.amr),
            acr=args.acr,
            auth_age=args.auth_age,
            risks=args.risk,
        )
    )
    return 0
