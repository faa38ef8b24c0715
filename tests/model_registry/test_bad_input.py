"""Bad requests get a precise status and a message saying what to fix, never INTERNAL."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import grpc
import pytest

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from tests.model_registry.helpers import new_model, status_of
from tests.support import registry_client as client

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


async def _stream(
    *messages: rr.RegisterModelVersionRequest,
) -> AsyncIterator[rr.RegisterModelVersionRequest]:
    for message in messages:
        yield message


def _chunk(name: str = "model.onnx", data: bytes = b"x") -> rr.RegisterModelVersionRequest:
    return rr.RegisterModelVersionRequest(chunk=rr.ArtifactChunk(name=name, data=data))


def _meta(meta: rr.ModelVersionMetadata) -> rr.RegisterModelVersionRequest:
    return rr.RegisterModelVersionRequest(metadata=meta)


async def test_registration_stream_errors(registry: ModelRegistryStub) -> None:
    name = await new_model(registry)
    no_signature = client.metadata(name, signature=None)
    nan_metric = client.metadata(name, metrics={"auc": math.nan})
    inf_metric = client.metadata(name, metrics={"log_loss": math.inf})
    no_artifacts = client.metadata(name, artifacts=[])
    bad_artifact_name = client.metadata(name, artifacts=["../etc/passwd"])
    untyped_input = client.metadata(name)
    untyped_input.signature.inputs[0].dtype = message_pb2.DATA_TYPE_UNSPECIFIED
    cases = {
        "empty stream": ((), INVALID, "first message"),
        "chunk before metadata": ((_chunk(),), INVALID, "first message"),
        "missing signature": ((_meta(no_signature), _chunk()), INVALID, "signature is required"),
        "untyped input": ((_meta(untyped_input), _chunk()), INVALID, "needs a dtype"),
        "nan metric": ((_meta(nan_metric), _chunk()), INVALID, "finite"),
        "infinite metric": ((_meta(inf_metric), _chunk()), INVALID, "finite"),
        "no artifacts": ((_meta(no_artifacts),), INVALID, "at least one artifact"),
        "path as artifact name": ((_meta(bad_artifact_name), _chunk()), INVALID, "artifact name"),
        "metadata twice": (
            (_meta(client.metadata(name)), _meta(client.metadata(name))),
            INVALID,
            "only once",
        ),
        "undeclared chunk": (
            (_meta(client.metadata(name)), _chunk("other.bin")),
            INVALID,
            "did not declare",
        ),
        "declared, never sent": ((_meta(client.metadata(name)),), INVALID, "no content"),
        "unknown model": (
            (_meta(client.metadata("no-such-model")), _chunk()),
            NOT_FOUND,
            "no-such-model",
        ),
    }
    for label, (messages, expected_code, fragment) in cases.items():
        code, details = await status_of(registry.RegisterModelVersion(_stream(*messages)))
        assert (code, fragment in details) == (expected_code, True), f"{label}: {code} {details}"
    model = (await registry.GetModel(rr.GetModelRequest(name=name))).model
    assert model.latest_version == 0, "a rejected registration must leave nothing behind"


async def test_unknown_things_are_not_found(registry: ModelRegistryStub) -> None:
    name = await new_model(registry)
    await client.register(registry, name)
    calls = {
        "version": registry.GetModelVersion(rr.GetModelVersionRequest(model_name=name, version=9)),
        "versions of unknown model": registry.ListModelVersions(
            rr.ListModelVersionsRequest(model_name="nope")
        ),
        "alias target": registry.SetAlias(
            rr.SetAliasRequest(model_name=name, alias="prod", version=9)
        ),
        "alias of unknown model": registry.SetAlias(
            rr.SetAliasRequest(model_name="nope", alias="prod", version=1)
        ),
        "unset alias": registry.ResolveAlias(
            rr.ResolveAliasRequest(model_name=name, alias="production")
        ),
        "alias of missing model": registry.ResolveAlias(
            rr.ResolveAliasRequest(model_name="nope", alias="p")
        ),
        "delete unset alias": registry.DeleteAlias(
            rr.DeleteAliasRequest(model_name=name, alias="shadow")
        ),
        "lineage": registry.GetLineage(rr.GetLineageRequest(model_name=name, version=4)),
        "history": registry.GetModelHistory(rr.GetModelHistoryRequest(model_name="nope")),
        "approve unknown version": registry.ApproveModelVersion(
            rr.ApproveModelVersionRequest(model_name=name, version=5, alias="production"),
            metadata=[("lathe-actor", "bob")],
        ),
    }
    for label, call in calls.items():
        code, details = await status_of(call)
        assert code == NOT_FOUND, f"{label}: {code} {details}"

    async def drain() -> None:
        async for _ in registry.DownloadArtifact(
            rr.DownloadArtifactRequest(model_name=name, version=1, artifact_name="missing.bin")
        ):
            pass

    code, details = await status_of(drain())
    assert code == NOT_FOUND and "model.onnx" in details


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (rr.SetAliasRequest(model_name="m", alias="Prod!", version=1), "not a valid name"),
        (
            rr.SetAliasRequest(model_name="m", alias="canary", version=1, traffic_share=1.5),
            "[0, 1]",
        ),
        (
            rr.SetAliasRequest(model_name="m", alias="canary", version=1, traffic_share=math.nan),
            "finite",
        ),
        (rr.SetAliasRequest(model_name="m", alias="prod", version=0), "positive version"),
        (
            rr.SetAliasRequest(model_name="m", alias="prod", version=1, expected_version=-3),
            "expected_version",
        ),
    ],
    ids=["alias-name", "share-above-one", "share-nan", "version-zero", "negative-expected"],
)
async def test_bad_alias_requests(
    registry: ModelRegistryStub, request_: rr.SetAliasRequest, fragment: str
) -> None:
    code, details = await status_of(registry.SetAlias(request_))
    assert code == INVALID
    assert fragment in details


async def test_bad_policies_and_anonymous_approvals(registry: ModelRegistryStub) -> None:
    name = await new_model(registry)
    no_comparison = message_pb2.PromotionPolicy(
        protected_aliases=[
            message_pb2.ProtectedAlias(
                alias="production", gates=[message_pb2.MetricGate(metric="auc", threshold=0.7)]
            )
        ]
    )
    nan_threshold = message_pb2.PromotionPolicy(
        protected_aliases=[
            message_pb2.ProtectedAlias(
                alias="production",
                gates=[
                    message_pb2.MetricGate(
                        metric="auc", comparison=message_pb2.COMPARISON_GREATER, threshold=math.nan
                    )
                ],
            )
        ]
    )
    twice = message_pb2.PromotionPolicy(
        protected_aliases=[
            message_pb2.ProtectedAlias(alias="p"),
            message_pb2.ProtectedAlias(alias="p"),
        ]
    )
    for policy, fragment in (
        (no_comparison, "comparison"),
        (nan_threshold, "finite"),
        (twice, "twice"),
    ):
        code, details = await status_of(
            registry.SetPromotionPolicy(
                rr.SetPromotionPolicyRequest(model_name=name, policy=policy)
            )
        )
        assert (code, fragment in details) == (INVALID, True), details
    code, details = await status_of(
        registry.ApproveModelVersion(
            rr.ApproveModelVersionRequest(model_name=name, version=1, alias="production")
        )
    )
    assert code == INVALID and "lathe-actor" in details
