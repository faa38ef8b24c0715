"""The feature store's point-in-time training set, as Arrow, for a job's frozen labels."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from lathe.feature_store.v1 import request_response_pb2 as fs_rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.grpckit import open_channel


@dataclass(frozen=True)
class TrainingSet:
    table: pa.Table
    """The label rows in order, with a column per feature (``view:feature``)."""
    snapshot_id: str
    feature_names: tuple[str, ...]


class FeatureStoreGateway:
    def __init__(self, address: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._address = address
        self._metadata = metadata

    async def training_set(self, labels: pa.Table, feature_service: str) -> TrainingSet:
        """``GetHistoricalFeatures`` (an Arrow IPC stream each way) for these label rows."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, labels.schema) as writer:
            writer.write_table(labels)
        request = fs_rr.GetHistoricalFeaturesRequest(
            feature_service=feature_service, entity_rows_arrow=sink.getvalue().to_pybytes()
        )
        snapshot, parts = None, []
        async with open_channel(self._address) as channel:
            stub = FeatureStoreStub(channel)
            async for response in stub.GetHistoricalFeatures(request, metadata=self._metadata):
                if response.HasField("snapshot"):
                    snapshot = response.snapshot
                else:
                    parts.append(response.arrow_ipc)
        if snapshot is None:
            raise RuntimeError("the feature store sent no dataset snapshot")
        table = pa.ipc.open_stream(b"".join(parts)).read_all()
        return TrainingSet(table, snapshot.snapshot_id, tuple(snapshot.feature_names))
