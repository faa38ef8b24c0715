"""Postgres access shared by the services: pools, identifiers and migrations."""

from libs.db.identifiers import quote_ident, validate_identifier
from libs.db.migrations import Migration, apply_migrations, load_migrations
from libs.db.pool import connect_pool, on_commit, transaction
from libs.db.slices import delete_in_slices

__all__ = [
    "Migration",
    "apply_migrations",
    "connect_pool",
    "delete_in_slices",
    "load_migrations",
    "on_commit",
    "quote_ident",
    "transaction",
    "validate_identifier",
]
