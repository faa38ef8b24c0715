"""`lathe models ...` against a real registry, as an engineer types it."""

from __future__ import annotations

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings
from tests.model_registry.helpers import new_model
from tests.support import registry_client as client
from tests.support.cli import run_lathe


async def _lathe(settings: LatheSettings, *args: str) -> tuple[int, str]:
    return await run_lathe(settings, "models", *args)


async def test_list_show_versions_promote_lineage_history(
    registry: ModelRegistryStub, test_settings: LatheSettings
) -> None:
    protected = message_pb2.PromotionPolicy(
        protected_aliases=[message_pb2.ProtectedAlias(alias="production", require_approval=True)]
    )
    name = await new_model(registry, policy=protected)
    await client.register(registry, name, metrics={"auc": 0.77})
    await client.register(registry, name, metrics={"auc": 0.81})

    code, listing = await _lathe(test_settings, "list", "--owner", "uw-ml")
    assert code == 0 and name in listing
    code, versions = await _lathe(test_settings, "versions", name)
    assert code == 0 and "auc=0.81" in versions and "auc=0.77" in versions

    code, refused = await _lathe(
        test_settings, "promote", name, "production", "2", "--actor", "alice"
    )
    assert code == 1 and "FAILED_PRECONDITION" in refused and "approval" in refused
    code, _ = await _lathe(test_settings, "approve", name, "2", "production", "--actor", "bob")
    assert code == 0
    code, promoted = await _lathe(
        test_settings, "promote", name, "production", "2", "--actor", "alice"
    )
    assert code == 0 and "production -> version 2" in promoted

    resolved = await registry.ResolveAlias(
        rr.ResolveAliasRequest(model_name=name, alias="production")
    )
    assert resolved.alias.version == 2 and resolved.alias.updated_by == "alice"
    code, lineage = await _lathe(test_settings, "lineage", name, "2")
    assert code == 0 and "production" in lineage and "model.onnx" in lineage
    code, history = await _lathe(test_settings, "history", name)
    assert code == 0 and "approved for production" in history and "bob" in history
    code, missing = await _lathe(test_settings, "show", "no-such-model")
    assert code == 1 and "NOT_FOUND" in missing
