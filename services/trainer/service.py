"""The trainer service. Today a shell: health, reflection, event store; RPCs UNIMPLEMENTED."""

from lathe.trainer.v1 import service_pb2
from libs.config import ServiceName
from libs.runtime.shell import shell_spec

SPEC = shell_spec(
    ServiceName.TRAINER,
    service_pb2.DESCRIPTOR.services_by_name["Trainer"],
    "training jobs arrive with the trainer issue",
)
