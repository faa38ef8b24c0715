"""Feature definitions as data: their rules, what applying them changes, read plans."""
