"""
The shape of the code: packages that read like the request's path, kept so.

  - no import cycle between appproxy's modules (imports made when a module
    loads; an import inside a function or under C{TYPE_CHECKING} runs later
    and cannot make one);
  - each package imports only from the packages below it in L{LAYERS};
  - the pure modules load without Twisted's reactor, twisted.web or treq
    (checked by importing each in a fresh interpreter);
  - no module over 400 lines.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "appproxy"

#: What each package may import from appproxy, besides itself.  A package
#: that is not listed may import anything (the entry points: C{cli},
#: C{daemon}).
LAYERS: Mapping[str, frozenset[str]] = {
    "http": frozenset(),
    "observe": frozenset(),
    "state": frozenset({"http", "oidc", "observe"}),
    "access": frozenset({"http", "state"}),
    "identity": frozenset({"http", "access", "state"}),
    "config": frozenset({"http", "access"}),
    "oidc": frozenset({"http"}),
    "idp": frozenset({"http", "access", "state", "oidc", "frontend", "observe"}),
    "tunnel": frozenset({"http", "config", "frontend", "daemon", "observe"}),
    "connector": frozenset({"http", "config", "tunnel", "daemon", "observe"}),
    "gate": frozenset(
        {"http", "access", "identity", "oidc", "state", "config", "idp", "frontend", "observe"}
    ),
    "frontend": frozenset(
        {"http", "access", "identity", "gate", "tunnel", "config", "state", "observe"}
    ),
    "trust": frozenset({"http", "config", "state", "oidc", "tunnel", "daemon", "observe"}),
    "admin": frozenset({"http", "config", "state", "oidc", "trust", "daemon", "observe", "access"}),
}

#: Packages and modules that must load without the reactor, twisted.web or
#: treq: the decisions, kept apart from I/O.
PURE = (
    "appproxy.http",
    "appproxy.config",
    "appproxy.access",
    "appproxy.identity",
    "appproxy.state.files",
    "appproxy.admin.cursor",
    "appproxy.admin.filters",
    "appproxy.admin.records",
    "appproxy.admin.syslog",
    "appproxy.admin.overview",
    "appproxy.admin.page_assets",
    "appproxy.state.signins",
    "appproxy.state.schema",
    "appproxy.state.queries",
    "appproxy.state.sessions",
    "appproxy.state.connectors",
    "appproxy.state.connector_records",
    "appproxy.state.admission",
    "appproxy.state.audit",
    "appproxy.state.enrolment_tokens",
    "appproxy.state._transaction",
    "appproxy.oidc.errors",
    "appproxy.oidc._wire",
    "appproxy.oidc.keys",
    "appproxy.oidc.settings",
    "appproxy.oidc.metadata",
    "appproxy.oidc.authorize",
    "appproxy.oidc.tokens",
    "appproxy.idp.totp",
    "appproxy.idp.pages",
    "appproxy.idp.signing",
    "appproxy.idp.users",
    "appproxy.idp.memory",
    "appproxy.idp.settings",
    "appproxy.idp.store",
    "appproxy.idp.passwords",
    "appproxy.gate.paths",
    "appproxy.gate.replies",
    "appproxy.gate.claims",
    "appproxy.gate.binding",
    "appproxy.frontend.routing",
    "appproxy.frontend.errorpage",
    "appproxy.frontend.answers",
    "appproxy.frontend.ws_frames",
    "appproxy.tunnel.frame_repr",
    "appproxy.tunnel.fields",
    "appproxy.tunnel.received",
    "appproxy.tunnel.wire",
    "appproxy.tunnel.wire_stream",
    "appproxy.tunnel.wire_send",
    "appproxy.tunnel.wire_control",
    "appproxy.tunnel.wire_receive",
    "appproxy.tunnel.connection",
    "appproxy.tunnel.enrolment",
    "appproxy.connector.origins",
    "appproxy.trust.admin_token",
    "appproxy.trust.errors",
    "appproxy.trust.settings",
    "appproxy.tunnel.stream",
    "appproxy.tunnel.machine_base",
    "appproxy.tunnel.machine",
    "appproxy.tunnel.connection_machine",
    "appproxy.tunnel.upgrade_machine",
    "appproxy.tunnel.connector_machine",
    "appproxy.tunnel.connector_stream",
    "appproxy.tunnel.connector_upgrade",
    "appproxy.cli.init_config",
    "appproxy.cli.systemd_units",
    "appproxy.daemon.pki",
    "appproxy.daemon.csr",
    "appproxy.daemon.sdnotify",
    "appproxy.daemon.heap",
    "appproxy.observe.metrics",
    "appproxy.observe.requests",
    "appproxy.observe.live",
)

#: Modules whose loading marks a module as not pure.
IMPURE = ("twisted.internet.reactor", "twisted.web", "treq", "twisted.enterprise")

MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _load_time_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements a module runs as it loads."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                pending.extend(node.body)
            pending.extend(node.orelse)
        elif isinstance(node, ast.Try):
            pending.extend(node.body)
            for handler in node.handlers:
                pending.extend(handler.body)
            pending.extend(node.orelse)
            pending.extend(node.finalbody)


def _all_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def _targets(node: ast.Import | ast.ImportFrom, modules: Mapping[str, Path]) -> set[str]:
    """The appproxy modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        # "from appproxy.x import y" loads appproxy.x.y when y is a module.
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.startswith("appproxy.") and name != "appproxy":
            found.add(name)
    return found


def _graph(load_time: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        statements = _load_time_imports(tree) if load_time else _all_imports(tree)
        graph[name] = {
            target
            for node in statements
            for target in _targets(node, modules)
            if target != name and not name.startswith(target + ".")
        }
    return graph


def _cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _impure_loads(names: list[str]) -> list[str]:
    """The impure modules loaded by importing C{names} in a fresh interpreter."""
    script = (
        "import importlib, json, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({IMPURE!r}))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if out.returncode:
        raise AssertionError(f"importing {names} failed:\n{out.stderr}")
    loaded: list[str] = json.loads(out.stdout)
    return loaded


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


class LayoutTests(SynchronousTestCase):
    def test_cycle_finder(self) -> None:
        """
        The cycle finder itself finds a cycle, and only a real one (so the
        tests below can fail).
        """
        self.assertEqual(
            _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}), [["a", "b", "c"]]
        )
        self.assertEqual(_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}), [])

    def test_no_import_cycles(self) -> None:
        self.assertEqual(_cycles(_graph(load_time=True)), [])

    def test_packages_import_only_lower_layers(self) -> None:
        """
        Every import, including those made inside functions, goes from a
        package to itself or to a package its layer allows.
        """
        problems = []
        for module, targets in sorted(_graph(load_time=False).items()):
            package = _package(module)
            allowed = LAYERS.get(package)
            if allowed is None:
                continue
            for target in sorted(targets):
                other = _package(target)
                if other != package and other not in allowed:
                    problems.append(f"{module} imports {target}")
        self.assertEqual(problems, [])

    def test_every_package_is_placed(self) -> None:
        """
        Every package is in L{LAYERS} or is an entry point, and each has a
        docstring saying what it holds.
        """
        packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
        self.assertEqual(sorted(set(packages) - set(LAYERS)), ["cli", "daemon"])
        for name in packages:
            tree = ast.parse((PACKAGE / name / "__init__.py").read_text())
            self.assertTrue(
                ast.get_docstring(tree), f"appproxy/{name}/__init__.py has no docstring"
            )

    def test_pure_modules_load_without_reactor(self) -> None:
        """
        Importing each pure module, in a fresh interpreter, loads neither the
        reactor nor twisted.web nor treq.
        """
        modules = _modules()
        pure = sorted(
            name for name in modules if any(name == p or name.startswith(p + ".") for p in PURE)
        )
        self.assertGreater(len(pure), 20)
        bad = {}
        if _impure_loads(pure):
            # Name the culprits: each module alone, in its own interpreter.
            bad = {name: loaded for name in pure if (loaded := _impure_loads([name]))}
        self.assertEqual(bad, {})

    def test_modules_are_small(self) -> None:
        big = {
            name: n
            for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES
        }
        self.assertEqual(big, {})
