"""Versioned schema migrations, one Postgres schema per owner.

A migration is a SQL file ``NNNN_description.sql`` run with ``search_path`` set
to the owning schema, so the SQL names its tables unqualified. Each component
(e.g. the shared event store, then the service's own tables) keeps its own
version sequence in ``<schema>.schema_migrations``. Applying is idempotent and
safe to run from several replicas at once (an advisory lock serializes them),
and a migration whose file changed after it was applied is refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from libs.db.identifiers import quote_ident
from libs.db.locks import lock_name, xact_lock

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One schema change of one component."""

    component: str
    """Whose change this is, e.g. ``eventstore`` or ``model_registry``."""
    version: int
    """Position in the component's sequence, starting at 1."""
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(component: str, directory: Path) -> list[Migration]:
    """Read ``NNNN_name.sql`` files from ``directory`` in version order."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path} must be named NNNN_lowercase_name.sql")
        migrations.append(
            Migration(component, int(match.group(1)), match.group(2), path.read_text())
        )
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise ValueError(f"migrations in {directory} must be numbered 0001.. without gaps")
    return migrations


async def apply_migrations(
    conn: asyncpg.Connection, schema: str, migrations: list[Migration]
) -> list[Migration]:
    """Create ``schema`` if needed and apply the migrations not applied yet; return those."""
    quoted = quote_ident(schema, what="schema")
    applied_now: list[Migration] = []
    async with conn.transaction():
        # Serializes concurrent migrators (replicas starting together) per schema.
        await xact_lock(conn, lock_name("migrate", schema))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (
                    component text NOT NULL,
                    version integer NOT NULL,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (component, version))"""
        )
        rows = await conn.fetch(
            f"SELECT component, version, checksum FROM {quoted}.schema_migrations"
        )
        done = {(r["component"], r["version"]): r["checksum"] for r in rows}
        await conn.execute(f"SET LOCAL search_path TO {quoted}, public")
        for migration in migrations:
            key = (migration.component, migration.version)
            if key in done:
                if done[key] != migration.checksum:
                    raise RuntimeError(
                        f"migration {migration.component}/{migration.version:04d}_{migration.name} "
                        f"in schema {schema!r} was changed after it was applied; add a new "
                        "migration instead of editing an applied one"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {quoted}.schema_migrations (component, version, name, checksum) "
                "VALUES ($1, $2, $3, $4)",
                migration.component,
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration)
    return applied_now
