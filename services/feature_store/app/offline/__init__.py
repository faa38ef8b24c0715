"""Training sets (GetHistoricalFeatures) and statistics against their snapshots."""
