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


async def test_enum_values_the_contract_does_not_define_are_refused_not_stored(
    registry: ModelRegistryStub,
) -> None:
    """A newer client's (or a fuzzer's) unknown enum number would be stored and break every
    later promotion and history read of the model with INTERNAL."""
    name = await new_model(registry)
    await client.register(registry, name)
    unknown_comparison = message_pb2.PromotionPolicy(
        protected_aliases=[
            message_pb2.ProtectedAlias(
                alias="production",
                gates=[message_pb2.MetricGate(metric="auc", comparison=99, threshold=0.5)],  # type: ignore[arg-type]
            )
        ]
    )
    unknown_format = client.metadata(name)
    unknown_format.artifacts[0].format = 77  # type: ignore[assignment]
    unknown_dtype = client.metadata(name)
    unknown_dtype.signature.inputs[0].dtype = 55  # type: ignore[assignment]

    policy_code, policy_details = await status_of(
        registry.SetPromotionPolicy(
            rr.SetPromotionPolicyRequest(model_name=name, policy=unknown_comparison)
        )
    )
    for meta, fragment in ((unknown_format, "format"), (unknown_dtype, "dtype")):
        code, details = await status_of(
            registry.RegisterModelVersion(client.upload_stream(meta, {"model.onnx": [b"x"]}))
        )
        assert (code, fragment in details) == (INVALID, True), details
    history = await registry.GetModelHistory(rr.GetModelHistoryRequest(model_name=name))
    promoted = await registry.SetAlias(
        rr.SetAliasRequest(model_name=name, alias="production", version=1)
    )

    assert policy_code == INVALID and "comparison" in policy_details
    assert len(history.entries) == 2 and promoted.alias.version == 1


async def test_page_tokens_of_another_list_are_invalid_argument(
    registry: ModelRegistryStub,
) -> None:
    name = await new_model(registry)
    for _ in range(3):
        await client.register(registry, name)
    models_token = (await registry.ListModels(rr.ListModelsRequest(page_size=1))).next_page_token
    history_token = (
        await registry.GetModelHistory(rr.GetModelHistoryRequest(model_name=name, page_size=1))
    ).next_page_token
    versions_token = (
        await registry.ListModelVersions(rr.ListModelVersionsRequest(model_name=name, page_size=1))
    ).next_page_token
    calls = {
        "models token to history": registry.GetModelHistory(
            rr.GetModelHistoryRequest(model_name=name, page_token=models_token)
        ),
        "models token to versions": registry.ListModelVersions(
            rr.ListModelVersionsRequest(model_name=name, page_token=models_token)
        ),
        "history token to models": registry.ListModels(
            rr.ListModelsRequest(page_token=history_token)
        ),
        "versions token to history": registry.GetModelHistory(
            rr.GetModelHistoryRequest(model_name=name, page_token=versions_token)
        ),
    }
    for label, call in calls.items():
        code, details = await status_of(call)
        assert (code, "page_token" in details) == (INVALID, True), f"{label}: {code} {details}"
