"""Ports for servers the tests start, chosen where no client connection can take them.

A port the kernel hands out for ``bind(0)`` lies in its ephemeral range, which is also
where every outgoing connection (the Postgres pool, the NATS clients) gets its local port:
between the probe and the server's bind, one of those could take it ("Address already in
use"). Ports below that range are only ever taken by an explicit listener, so they are
picked from there, in an order of this process's own so two picks never repeat.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

_LOWEST = 20_000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _candidates() -> itertools.cycle[int]:
    span = range(_LOWEST, max(_ephemeral_start(), _LOWEST + 1_000))
    start = os.getpid() * 7919 % len(span)  # two test processes start far apart
    return itertools.cycle([*span[start:], *span[:start]])


_NEXT = _candidates()  # per process: the ports already handed out are not handed out again


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, outside the ephemeral range."""
    for port in _NEXT:
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError("unreachable: the cycle is endless")
