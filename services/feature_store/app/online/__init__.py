"""GetOnlineFeatures: the reader, its in-memory replica, ready entries and stream windows."""
