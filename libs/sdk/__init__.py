"""Client SDK for ML engineers: Lathe's services as Python calls."""
