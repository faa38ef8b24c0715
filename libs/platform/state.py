"""What `lathe up` started, saved under ``$LATHE_HOME/run/state.json`` for down/status."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class ProcessRecord:
    pid: int
    log_path: str


@dataclass
class ServiceRecord(ProcessRecord):
    addr: str
    metrics_port: int


@dataclass
class PlatformState:
    database_url: str
    nats_url: str
    namespace: str
    embedded_postgres_dir: str | None = None
    """Data directory of the embedded Postgres, when `lathe up` started one."""
    embedded_postgres_port: int | None = None
    embedded_nats: ProcessRecord | None = None
    embedded_nats_port: int | None = None
    services: dict[str, ServiceRecord] = field(default_factory=dict)

    @staticmethod
    def path(home: Path) -> Path:
        return home / "run" / "state.json"

    def save(self, home: Path) -> None:
        path = self.path(home)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2))
        temporary.replace(path)

    @classmethod
    def load(cls, home: Path) -> PlatformState | None:
        path = cls.path(home)
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        nats = raw.pop("embedded_nats")
        services = raw.pop("services")
        return cls(
            **raw,
            embedded_nats=ProcessRecord(**nats) if nats else None,
            services={name: ServiceRecord(**record) for name, record in services.items()},
        )

    @classmethod
    def remove(cls, home: Path) -> None:
        cls.path(home).unlink(missing_ok=True)
