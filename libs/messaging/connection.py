"""Connecting to NATS with retries while it is still starting."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

_log = logging.getLogger(__name__)


async def connect_nats(url: str, *, name: str = "lathe", connect_timeout_s: float = 30.0) -> Client:
    """Connect to ``url``; keeps reconnecting for ever once connected."""

    async def _log_error(exc: Exception) -> None:
        _log.warning("NATS connection to %s: %s", url, exc or type(exc).__name__)

    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type((OSError, nats.errors.NoServersError, TimeoutError)),
        wait=wait_exponential(multiplier=0.05, max=1.0),
        stop=stop_after_delay(connect_timeout_s),
        reraise=True,
    ):
        with attempt:
            client = await nats.connect(
                url,
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                connect_timeout=2,
                error_cb=_log_error,
            )
    _log.info("connected to NATS at %s", url)
    return client
