"""Inference's gRPC surface: validate requests, call the use cases, shape replies."""
