"""Pure feature-store logic (no I/O): names, values, rules, plans, aggregation, encodings.

The floor beneath ``store/``: it imports neither ``app/`` nor ``store/`` (nor gRPC, asyncpg
or DuckDB), so both can use it (docs/adr/0016-feature-store-layers.md).
"""
