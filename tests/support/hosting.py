"""Running a real service host inside the test process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from libs.config import LatheSettings
from libs.runtime import ServiceHost, ServiceSpec


@asynccontextmanager
async def hosted(spec: ServiceSpec, settings: LatheSettings) -> AsyncIterator[ServiceHost]:
    """Start ``spec`` as ``lathe up`` would (minus the process), stop it afterwards."""
    host = ServiceHost(spec, settings)
    task = asyncio.create_task(host.run())
    serving = asyncio.create_task(host.serving.wait())
    done, _ = await asyncio.wait({task, serving}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if serving not in done:
        serving.cancel()
        if task in done:
            task.result()  # raises the start-up error
        raise TimeoutError(f"{spec.name} did not reach SERVING within 30s")
    try:
        yield host
    finally:
        host.request_stop()
        await task
