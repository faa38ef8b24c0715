"""The platform runner behind `lathe up/down/status/logs`: infrastructure and processes."""
