"""Every service keeps its floors: api/ -> app/ -> store/ -> domain/, nothing running back up.

Read from the source with ``ast`` (nothing is imported), for every ``services/<name>/``,
so the registry, trainer and inference are held to what the feature store was
restructured into (docs/adr/0016-feature-store-layers.md):

- ``domain/`` imports no other floor of its service, and nothing that does I/O (gRPC,
  asyncpg, DuckDB, NATS, the db/eventstore/messaging/runtime/grpckit libs);
- ``store/`` imports neither ``app/`` nor ``api/``;
- ``app/`` imports neither ``api/`` nor gRPC nor DuckDB, and holds no SQL: no string that
  reads as a SQL statement, no call of a query method (``execute``, ``fetch``...);
  asyncpg itself is allowed there, for the transaction a command opens and hands to
  ``store/`` (the registry's unit-of-work pattern) and for listening to NOTIFY;
- ``api/`` imports no ``store/``;
- no service imports another.

A rule a service breaks today is listed in ``KNOWN`` with the reason: its case is
expected to fail (strictly: once fixed, the entry must go).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVICES = Path(__file__).parents[2] / "services"
FLOORS = ("api", "app", "store", "domain")
_IO_MODULES = (
    "grpc",
    "asyncpg",
    "duckdb",
    "nats",
    "libs.db",
    "libs.eventstore",
    "libs.messaging",
    "libs.runtime",
    "libs.grpckit",
)
_QUERY_METHODS = {
    "execute",
    "executemany",
    "fetch",
    "fetchval",
    "fetchrow",
    "copy_from_query",
    "copy_from_table",
    "copy_records_to_table",
    "copy_to_table",
    "cursor",
    "prepare",
    "sql",
}
_SQL = re.compile(
    r"\b(SELECT\s+\S|INSERT\s+INTO|UPDATE\s+[\w.]+\s+SET|DELETE\s+FROM|"
    r"CREATE\s+(TABLE|INDEX|SCHEMA)|ALTER\s+TABLE|DROP\s+TABLE)"
)

KNOWN: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Module:
    service: str
    floor: str | None
    """api, app, store, domain, or None (service.py, events.py, ...)."""
    path: Path
    tree: ast.Module

    @property
    def name(self) -> str:
        relative = self.path.relative_to(SERVICES.parent).with_suffix("")
        return ".".join(relative.parts).removesuffix(".__init__")

    def imports(self) -> Iterator[tuple[int, str]]:
        """(line, module) of every import, relative ones resolved; ``from a import b``
        yields both ``a`` and ``a.b`` (b may be a module)."""
        package = self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield node.lineno, alias.name
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                yield node.lineno, base
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}"


def _modules() -> list[Module]:
    found = []
    for path in sorted(SERVICES.glob("*/**/*.py")):
        service = path.relative_to(SERVICES).parts[0]
        inside = path.relative_to(SERVICES / service).parts
        floor = inside[0] if len(inside) > 1 and inside[0] in FLOORS else None
        found.append(Module(service, floor, path, ast.parse(path.read_text(), str(path))))
    return found


MODULES = _modules()


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _imports_of(floor: str, forbidden: list[str], service: str) -> list[str]:
    return [
        f"{m.path.relative_to(SERVICES)}:{line} imports {name}"
        for m in MODULES
        if m.service == service and m.floor == floor
        for line, name in m.imports()
        if any(_under(name, f) for f in forbidden)
    ]


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _sql_in_app(service: str) -> list[str]:
    found = []
    for m in MODULES:
        if m.service != service or m.floor != "app":
            continue
        docstrings = _docstrings(m.tree)
        where = m.path.relative_to(SERVICES)
        for node in ast.walk(m.tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and _SQL.search(node.value)
            ):
                found.append(f"{where}:{node.lineno} has SQL {node.value.strip()[:40]!r}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _QUERY_METHODS
            ):
                found.append(f"{where}:{node.lineno} runs a query (.{node.func.attr})")
    return found


def _rules(service: str) -> dict[str, list[str]]:
    own = f"services.{service}"
    others = [f"services.{s.name}" for s in SERVICES.iterdir() if s.is_dir() and s.name != service]
    return {
        "domain imports nothing above or doing I/O": _imports_of(
            "domain",
            [f"{own}.{floor}" for floor in ("api", "app", "store")]
            + [f"{own}.service", f"{own}.events", *_IO_MODULES],
            service,
        ),
        "store imports no app or api": _imports_of(
            "store", [f"{own}.app", f"{own}.api", f"{own}.service"], service
        ),
        "app imports no api, grpc or duckdb": _imports_of(
            "app", [f"{own}.api", f"{own}.service", "grpc", "duckdb"], service
        ),
        "app holds no SQL": _sql_in_app(service),
        "api imports no store": _imports_of("api", [f"{own}.store"], service),
        "no service imports another": [
            f"{m.path.relative_to(SERVICES)}:{line} imports {name}"
            for m in MODULES
            if m.service == service
            for line, name in m.imports()
            if any(_under(name, other) for other in others)
        ],
    }


_SERVICE_NAMES = sorted({m.service for m in MODULES})
_RULE_NAMES = list(_rules(_SERVICE_NAMES[0]))


def _cases() -> list[object]:
    cases = []
    for service in _SERVICE_NAMES:
        for rule in _RULE_NAMES:
            reason = KNOWN.get((service, rule))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(service, rule, id=f"{service}: {rule}", marks=marks))
    return cases


def test_every_service_is_checked() -> None:
    assert {"feature_store", "model_registry", "trainer", "inference"} <= set(_SERVICE_NAMES)
    floors = {m.floor for m in MODULES if m.service == "feature_store"}
    assert floors == {None, *FLOORS}


@pytest.mark.parametrize(("service", "rule"), _cases())
def test_layers(service: str, rule: str) -> None:
    violations = _rules(service)[rule]
    assert not violations, f"{service} breaks '{rule}':\n" + "\n".join(violations)


def test_the_checks_see_violations() -> None:
    """The checks catch what they claim to (so a passing suite means something)."""
    source = (
        "import grpc\n"
        "from ...store import online\n"
        "from services.feature_store.api.servicer import X\n"
        "Q = 'SELECT x FROM t'\n"
        "async def f(conn):\n"
        "    await conn.fetchval(Q)\n"
    )
    path = SERVICES / "feature_store" / "app" / "online" / "probe.py"
    probe = Module("feature_store", "app", path, ast.parse(source))
    imported = [name for _, name in probe.imports()]
    assert "grpc" in imported
    assert "services.feature_store.store.online" in imported
    MODULES.append(probe)
    try:
        rules = _rules("feature_store")
    finally:
        MODULES.remove(probe)
    assert any("imports grpc" in v for v in rules["app imports no api, grpc or duckdb"])
    assert not any("store.online" in v for v in rules["app imports no api, grpc or duckdb"])
    assert any("api.servicer" in v for v in rules["app imports no api, grpc or duckdb"])
    assert any("has SQL" in v for v in rules["app holds no SQL"])
    assert any(".fetchval" in v for v in rules["app holds no SQL"])


def test_the_checks_see_a_lock_in_app_and_a_store_import_in_api() -> None:
    """What inference had before it kept its floors: a row lock run from ``app/`` and an
    error class imported by ``api/`` from ``store/``."""
    app = Module(
        "inference",
        "app",
        SERVICES / "inference" / "app" / "probe.py",
        ast.parse(
            "_LOCK = 'SELECT 1 FROM inference.deployments WHERE alias = $1 FOR UPDATE'\n"
            "async def f(conn):\n"
            "    await conn.execute(_LOCK, 'a')\n"
        ),
    )
    api = Module(
        "inference",
        "api",
        SERVICES / "inference" / "api" / "probe.py",
        ast.parse("from ..store.features import FeatureDeadline\n"),
    )
    MODULES.extend([app, api])
    try:
        rules = _rules("inference")
    finally:
        MODULES.remove(app)
        MODULES.remove(api)
    assert any("app/probe.py:1 has SQL" in v for v in rules["app holds no SQL"])
    assert any("app/probe.py:3 runs a query (.execute)" in v for v in rules["app holds no SQL"])
    assert any(
        "api/probe.py:1 imports services.inference.store.features" in v
        for v in rules["api imports no store"]
    )
