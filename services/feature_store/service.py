"""The feature store service. Today a shell: health, reflection, event store; RPCs UNIMPLEMENTED."""

from lathe.feature_store.v1 import service_pb2
from libs.config import ServiceName
from libs.runtime.shell import shell_spec

SPEC = shell_spec(
    ServiceName.FEATURE_STORE,
    service_pb2.DESCRIPTOR.services_by_name["FeatureStore"],
    "definitions, ingestion and serving arrive with the feature store issue",
)
