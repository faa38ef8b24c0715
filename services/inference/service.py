"""The inference service. Today a shell: health, reflection, event store; RPCs UNIMPLEMENTED."""

from lathe.inference.v1 import service_pb2
from libs.config import ServiceName
from libs.runtime.shell import shell_spec

SPEC = shell_spec(
    ServiceName.INFERENCE,
    service_pb2.DESCRIPTOR.services_by_name["Inference"],
    "online prediction arrives with the inference issue",
)
