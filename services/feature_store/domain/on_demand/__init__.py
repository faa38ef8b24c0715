"""On-demand features: user code checked, compiled and run one row at a time, in budget."""
