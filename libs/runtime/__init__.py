"""Running one Lathe service process: the host every service's ``main`` hands itself to."""

from libs.runtime.host import ServiceHost, run_service
from libs.runtime.spec import (
    BackgroundTask,
    PartHealth,
    ReadinessCheck,
    ServiceComponents,
    ServiceContext,
    ServiceSpec,
)

__all__ = [
    "BackgroundTask",
    "PartHealth",
    "ReadinessCheck",
    "ServiceComponents",
    "ServiceContext",
    "ServiceHost",
    "ServiceSpec",
    "run_service",
]
