"""Inference's outside world: its Postgres tables, the registry and the feature store."""
