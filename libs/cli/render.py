"""Tables and trees the CLI prints."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from libs.platform.runner import ServiceStatus


def status_table(statuses: Sequence[ServiceStatus]) -> Table:
    table = Table("service", "address", "pid", "health", "log")
    for s in statuses:
        color = "green" if s.health == "SERVING" else "red"
        table.add_row(
            s.name.display_name, s.addr, str(s.pid), f"[{color}]{s.health}[/{color}]", s.log_path
        )
    return table
