"""Running a real service host inside the test process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from libs.config import LatheSettings
from libs.runtime import ServiceHost, ServiceSpec


@asynccontextmanager
async def hosted(
    spec: ServiceSpec, settings: LatheSettings, *, until_serving: bool = True
) -> AsyncIterator[ServiceHost]:
    """Start ``spec`` as ``lathe up`` would (minus the process), stop it afterwards.

    ``until_serving``: wait for readiness; False waits only until it started (servicers
    bound), for a service whose readiness the test itself holds back (inference with a
    production version it refuses)."""
    host = ServiceHost(spec, settings)
    task = asyncio.create_task(host.run())
    ready = host.serving if until_serving else host.started
    waiting = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiting}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if waiting not in done:
        waiting.cancel()
        if task in done:
            task.result()  # raises the start-up error
        # Stopped, not left running: a server alive at interpreter exit crashes gRPC.
        host.request_stop()
        await task
        what = "reach SERVING" if until_serving else "start"
        raise TimeoutError(f"{spec.name} did not {what} within 30s")
    try:
        yield host
    finally:
        host.request_stop()
        await task
