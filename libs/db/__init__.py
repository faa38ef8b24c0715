"""Postgres access shared by the services: bounded pools, outage errors, identifiers, migrations."""

from libs.db.errors import (
    DatabaseDeadlineExceeded,
    DatabaseTimedOut,
    DatabaseUnavailable,
    OutageLog,
    database_failure,
)
from libs.db.identifiers import quote_ident, validate_identifier
from libs.db.migrations import Migration, apply_migrations, load_migrations
from libs.db.opened_transactions import transaction_opened_with
from libs.db.pool import BoundedConnection, BoundedPool, connect_pool, on_commit, transaction
from libs.db.slices import delete_in_slices

__all__ = [
    "BoundedConnection",
    "BoundedPool",
    "DatabaseDeadlineExceeded",
    "DatabaseTimedOut",
    "DatabaseUnavailable",
    "Migration",
    "OutageLog",
    "apply_migrations",
    "connect_pool",
    "database_failure",
    "delete_in_slices",
    "load_migrations",
    "on_commit",
    "quote_ident",
    "transaction",
    "transaction_opened_with",
    "validate_identifier",
]
