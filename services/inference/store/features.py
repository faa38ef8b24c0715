"""The feature store as Predict uses it: one GetOnlineFeatures call per request.

The call inherits what is left of the Predict call's deadline (``open_channel``'s
interceptor) and continues its trace. The feature store's own verdicts keep their
meaning: its INVALID_ARGUMENT (a wrongly typed request feature, a missing join key)
is the caller's mistake and stays INVALID_ARGUMENT with its message; NOT_FOUND (a
feature the model reads no longer exists) is a deployment problem, FAILED_PRECONDITION.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.feature_store.v1 import request_response_pb2 as fsr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.errors import FailedPrecondition, InvalidArgument, Unavailable
from libs.grpckit import open_channel


class FeatureDeadline(Exception):
    """The deadline passed while the feature store answered."""


class OnlineFeatures:
    def __init__(self, address: str) -> None:
        self._channel = open_channel(address)
        self._stub = FeatureStoreStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def get(
        self,
        *,
        feature_service: str,
        features: Sequence[str],
        entities: Mapping[str, fs.RepeatedValue],
        request_data: Mapping[str, fs.RepeatedValue],
    ) -> fsr.GetOnlineFeaturesResponse:
        request = fsr.GetOnlineFeaturesRequest(entities=entities, request_data=request_data)
        if feature_service:
            request.feature_service = feature_service
        else:
            request.feature_list.features.extend(features)
        try:
            return await self._stub.GetOnlineFeatures(request)
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(f"the feature store refused the rows: {details}") from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise FailedPrecondition(
                    f"the feature store does not serve what this model reads: {details}"
                ) from None
            if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                raise FeatureDeadline(details) from None
            raise Unavailable(f"the feature store answered {code.name}: {details}") from None
