"""Writes of feature values: the one writer, PushFeatures and batch materialization."""
