"""Use cases of the feature store, one sub-package per sub-domain (no SQL, no gRPC)."""
