"""A raw grpc.aio echo server: the floor under any Lathe RPC (no interceptors, no I/O).

Run as ``python -m bench.echo_server <port>``; it answers /bench.Echo/Echo with the
request bytes, /bench.Echo/Sized with as many bytes as the request's decimal number
says (the floor under a large reply), and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

ECHO_METHOD = "/bench.Echo/Echo"
SIZED_METHOD = "/bench.Echo/Sized"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _sized(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"\x00" * int(request)


async def main(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Sized": grpc.unary_unary_rpc_method_handler(_sized),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
