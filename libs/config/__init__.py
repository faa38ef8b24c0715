"""Configuration of every Lathe process, read from ``LATHE_*`` environment variables."""

from libs.config.settings import LatheSettings, ServiceName

__all__ = ["LatheSettings", "ServiceName"]
