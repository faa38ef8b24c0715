"""Applying definitions, and the in-memory definitions every read plans from."""
