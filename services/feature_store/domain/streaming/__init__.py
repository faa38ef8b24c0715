"""Stream views: events as a view reads them, tiles and windows, values as of a time."""
