"""
What C{appproxy init} prints once it has written its directory: the files,
how to run the two daemons (under systemd when C{appproxy install} would
accept the paths), how to add a user, and how to register a connector on
another host, whose key is made there and never copied.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TextIO

from appproxy.cli.init_config import InitPlan
from appproxy.cli.install import hidden_path_problem
from appproxy.daemon import pki

__all__ = ["KEY_MODE", "REMOTE_CONNECTOR_STATE_DIR", "print_next_steps"]

#: The mode of the private files init writes (listed as such).
KEY_MODE = 0o600

#: Where C{appproxy-connector register} keeps a connector's files on its host.
REMOTE_CONNECTOR_STATE_DIR = "/var/lib/appproxy-connector"


def _files(plan: InitPlan, files: list[tuple[str, bytes, int]], out: TextIO) -> None:
    print(f"Wrote {plan.state_dir}:", file=out)
    for name, _, mode in files:
        print(f"  {name}{'  (private key, mode 0600)' if mode == KEY_MODE else ''}", file=out)
    recorded = f"the connector {plan.connector_id} (group {plan.group}) is registered in it"
    if plan.data_dir is None:
        if plan.with_connector:
            print(f"  state/appproxy.sqlite  (the service's state database; {recorded})", file=out)
        else:
            print("  state/  (the service's state)", file=out)
    elif plan.with_connector:
        print(
            f"The service keeps its state in {plan.data_dir}; its state database there"
            f" (appproxy.sqlite): {recorded}.",
            file=out,
        )
    else:
        print(f"The service keeps its state in {plan.data_dir}.", file=out)


def _daemons(plan: InitPlan, out: TextIO) -> None:
    quoted = shlex.quote(str(plan.state_dir))
    connector_config = f"{quoted}/connector/connector.toml"
    both = "both" if plan.with_connector else "it"
    # What 'appproxy install' checks: a unit sees neither /home, /root nor /tmp.
    problem = hidden_path_problem(
        prefix=Path(sys.prefix),
        config=plan.state_dir / "service.toml",
        state=plan.data_dir if plan.data_dir is not None else plan.state_dir / "state",
    )
    if problem is None:
        print(f"Run {both} under systemd (as root, with the same virtualenv's appproxy):", file=out)
        print(f"  appproxy install service --config {quoted}/service.toml", file=out)
        if plan.with_connector:
            print(f"  appproxy install connector --config {connector_config}", file=out)
        print("or in the foreground, the service:", file=out)
    else:
        print(f"'appproxy install' cannot run these under systemd: {problem}.", file=out)
        print(
            "For a systemd install, init into /etc/appproxy with --data-dir /var/lib/appproxy"
            " from a virtualenv in /opt/appproxy (see README.md, 'Setting up').",
            file=out,
        )
        print(f"Run {both} in the foreground, the service:", file=out)
    print(f"  twistd --nodaemon --pidfile= appproxy --config {quoted}/service.toml", file=out)
    if plan.with_connector:
        print("and the connector (in another terminal):", file=out)
        print(
            f"  twistd --nodaemon --pidfile= appproxy-connector --config {connector_config}",
            file=out,
        )


def remote_connector_commands(plan: InitPlan, ca_pem: bytes) -> list[str]:
    """
    The commands that register a connector on another host: a one-time
    enrolment token made on the service's host, then C{appproxy-connector
    register} on the connector's host, which checks the service's CA against
    its fingerprint before it trusts anything.
    """
    quoted = shlex.quote(str(plan.state_dir))
    register = [
        "appproxy-connector",
        "register",
        f"--service https://{plan.tunnel_host}:{plan.tunnel_port}",
        f"--ca-fingerprint {pki.ca_fingerprint(ca_pem)}",
        f"--state-dir {REMOTE_CONNECTOR_STATE_DIR}",
        "--token-file FILE",
    ]
    if plan.service_address is not None:
        register.append(f"--address {shlex.quote(plan.service_address)}")
    return [
        f"appproxy connectors token create --group {plan.group} --state-dir {quoted}",
        " ".join(register),
    ]


def print_next_steps(
    plan: InitPlan, files: list[tuple[str, bytes, int]], ca_pem: bytes, out: TextIO
) -> None:
    """Tell the administrator what was written and what to run next."""
    _files(plan, files, out)
    print("", file=out)
    _daemons(plan, out)
    print("", file=out)
    print("Add a user who may sign in:", file=out)
    print(f"  appproxy users add alice --state-dir {shlex.quote(str(plan.state_dir))}", file=out)
    print("", file=out)
    token, register = remote_connector_commands(plan, ca_pem)
    print("A connector on another host makes its own key and registers; here:", file=out)
    print(f"  {token}", file=out)
    print("then there, with that token in FILE:", file=out)
    print(f"  {register}", file=out)
    print("", file=out)
    quoted = shlex.quote(str(plan.state_dir))
    external_url = plan.external_url
    print(f"Then open {external_url}", file=out)
    print(f"(the app at {plan.internal_url} must be running;", file=out)
    print(f" the certificate is signed by {quoted}/ca.pem), for example:", file=out)
    local, _, _ = plan.provider_address.rpartition(":")
    host_port = f"{plan.app_host}:{plan.port}"
    print(
        f"  curl --cacert {quoted}/ca.pem --resolve {host_port}:{local} {external_url}",
        file=out,
    )
