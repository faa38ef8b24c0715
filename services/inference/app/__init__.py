"""Inference's use cases: following aliases, loading versions, serving Predict, logging."""
