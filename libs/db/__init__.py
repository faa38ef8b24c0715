"""Postgres access shared by the services: pools, identifiers and migrations."""

from libs.db.identifiers import quote_ident, validate_identifier
from libs.db.migrations import Migration, apply_migrations, load_migrations
from libs.db.pool import connect_pool, on_commit, transaction

__all__ = [
    "Migration",
    "apply_migrations",
    "connect_pool",
    "load_migrations",
    "on_commit",
    "quote_ident",
    "transaction",
    "validate_identifier",
]
