"""Column names shared by the label set, the prepared dataset and the workers."""

LABEL = "__label"
"""The label as float64 (0 or 1)."""
SPLIT = "__split"
"""0: a training row, 1: a validation row."""
LABEL_TIME = "__label_time"
"""The row's label time (timestamp, UTC): the reference time of its events' ages."""
