"""Stream views: ingestion from JetStream, backfill, and point-in-time history."""
