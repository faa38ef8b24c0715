"""Request validation: protobuf requests in, checked application values out.

Every failure is InvalidArgument saying what to fix; nothing reaches the
application (or the database) unchecked.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from libs.errors import InvalidArgument
from libs.grpckit import validation
from services.model_registry.app.commands import AliasMove, NewModel, NewVersion
from services.model_registry.app.uploads import DeclaredArtifact

MAX_CHUNK_BYTES = 4 * 1024 * 1024
_ARTIFACT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_TEXT = 256


def _defined(enum: type) -> dict[int, str]:
    """Number -> name of an enum's values, UNSPECIFIED (0) left out: open proto3 enums let
    any number through, and an unknown one stored would break the model's later reads."""
    return {number: name for name, number in enum.items() if number}  # type: ignore[attr-defined]


_COMPARISONS = _defined(message_pb2.Comparison)
_DATA_TYPES = _defined(message_pb2.DataType)
_FORMATS = _defined(message_pb2.ArtifactFormat)


def new_model(request: rr.CreateModelRequest) -> NewModel:
    return NewModel(
        name=validation.resource_name(request.name, "name"),
        description=request.description,
        owner=_text(validation.require(request.owner, "owner"), "owner"),
        tags=validation.tags(request.tags),
        policy=policy(request.policy),
    )


def policy(value: message_pb2.PromotionPolicy) -> message_pb2.PromotionPolicy:
    seen: set[str] = set()
    for i, protected in enumerate(value.protected_aliases):
        field = f"policy.protected_aliases[{i}]"
        validation.resource_name(protected.alias, f"{field}.alias")
        if protected.alias in seen:
            raise InvalidArgument(f"{field}: alias {protected.alias!r} is protected twice")
        seen.add(protected.alias)
        for j, gate in enumerate(protected.gates):
            validation.resource_name(gate.metric, f"{field}.gates[{j}].metric")
            if gate.comparison not in _COMPARISONS:
                raise InvalidArgument(
                    f"{field}.gates[{j}].comparison must be one of "
                    f"{', '.join(_COMPARISONS.values())}; got {gate.comparison}"
                )
            validation.finite(gate.threshold, f"{field}.gates[{j}].threshold")
        for j, policy_gate in enumerate(protected.policy_value_gates):
            where = f"{field}.policy_value_gates[{j}]"
            validation.finite(policy_gate.margin, f"{where}.margin")
            if policy_gate.prefix:
                validation.resource_name(policy_gate.prefix, f"{where}.prefix")
    return value


def new_version(metadata: rr.ModelVersionMetadata) -> NewVersion:
    if not metadata.HasField("signature") or not metadata.signature.inputs:
        raise InvalidArgument(
            "metadata.signature is required and must list at least one input "
            "(feature name and dtype), so serving can check requests"
        )
    for field, specs in (
        ("inputs", metadata.signature.inputs),
        ("outputs", metadata.signature.outputs),
    ):
        for i, spec in enumerate(specs):
            _text(validation.require(spec.name, f"signature.{field}[{i}].name"), "name")
            if spec.dtype not in _DATA_TYPES:
                raise InvalidArgument(
                    f"signature.{field}[{i}] ({spec.name}) needs a dtype, one of "
                    f"{', '.join(_DATA_TYPES.values())}; got {spec.dtype}"
                )
            if any(d < -1 or d == 0 for d in spec.shape):
                raise InvalidArgument(f"signature.{field}[{i}].shape: use positive sizes or -1")
    for name, value in metadata.metrics.items():
        validation.resource_name(name, "metrics key")
        validation.finite(value, f"metrics[{name!r}]")
    lineage = metadata.lineage
    for field in (
        "training_job_id",
        "dataset_snapshot_id",
        "feature_service",
        "feature_service_version",
        "code_revision",
    ):
        _text(getattr(lineage, field), f"lineage.{field}")
    return NewVersion(
        model_name=validation.resource_name(metadata.model_name, "metadata.model_name"),
        description=metadata.description,
        signature=metadata.signature,
        metrics=dict(metadata.metrics),
        tags=validation.tags(metadata.tags),
        lineage=metadata.lineage,
        artifacts=_declared_artifacts(metadata.artifacts),
    )


def _declared_artifacts(declared: list[rr.ArtifactDeclaration]) -> tuple[DeclaredArtifact, ...]:
    if not declared:
        raise InvalidArgument(
            "metadata.artifacts must declare at least one artifact (e.g. model.onnx)"
        )
    names: set[str] = set()
    result = []
    for i, artifact in enumerate(declared):
        artifact_name(artifact.name, f"metadata.artifacts[{i}].name")
        if artifact.name in names:
            raise InvalidArgument(f"artifact {artifact.name!r} is declared twice")
        names.add(artifact.name)
        if artifact.format not in _FORMATS:
            raise InvalidArgument(
                f"metadata.artifacts[{i}].format must be one of "
                f"{', '.join(_FORMATS.values())}; got {artifact.format}"
            )
        if artifact.sha256 and not _SHA256_RE.fullmatch(artifact.sha256):
            raise InvalidArgument(f"metadata.artifacts[{i}].sha256 must be 64 lowercase hex digits")
        result.append(DeclaredArtifact(artifact.name, artifact.format, artifact.sha256))
    return tuple(result)


def artifact_name(name: str, field: str) -> str:
    if not _ARTIFACT_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{field} {name!r} is not a valid artifact name: 1-128 letters, digits, '.', '_', '-', "
            "starting with a letter or digit (no paths)"
        )
    return name


def chunk(request: rr.RegisterModelVersionRequest) -> tuple[str, bytes]:
    if request.HasField("metadata"):
        raise InvalidArgument("metadata may be sent only once, as the first message")
    if not request.HasField("chunk"):
        raise InvalidArgument("each message after the metadata must carry an artifact chunk")
    if len(request.chunk.data) > MAX_CHUNK_BYTES:
        raise InvalidArgument(f"artifact chunks must be at most {MAX_CHUNK_BYTES} bytes")
    return request.chunk.name, request.chunk.data


def version_number(version: int, field: str = "version") -> int:
    if version <= 0:
        raise InvalidArgument(f"{field} must be a positive version number, got {version}")
    return version


def alias_move(
    model_name: str, alias: str, version: int, expected_version: int, traffic_share: float = 0.0
) -> AliasMove:
    if expected_version < 0:
        raise InvalidArgument("expected_version must be >= 0 (0: the alias must not be set)")
    validation.finite(traffic_share, "traffic_share")
    if not 0.0 <= traffic_share <= 1.0:
        raise InvalidArgument(f"traffic_share must be within [0, 1], got {traffic_share}")
    return AliasMove(
        model_name=validation.resource_name(model_name, "model_name"),
        alias=validation.resource_name(alias, "alias"),
        version=version,
        expected_version=expected_version,
        traffic_share=traffic_share,
    )


def name_cursor(token: str, key: str, *, kind: str) -> str | None:
    """The name a page token of list ``kind`` (in name order) carries; None for the first page."""
    cursor = validation.decode_page_token(token, kind=kind, fields={key: str})
    value = cursor.get(key)
    return None if value is None else str(value)


def number_cursor(token: str, key: str, *, kind: str) -> int | None:
    """The version or position a page token of list ``kind`` carries; None for the first page."""
    cursor = validation.decode_page_token(token, kind=kind, fields={key: int})
    value = cursor.get(key)
    if value is not None and not 0 < int(value) < 2**62:
        raise _foreign_token()
    return None if value is None else int(value)


def _foreign_token() -> InvalidArgument:
    return InvalidArgument(
        "page_token is not a token of this list: pass next_page_token from the previous "
        "response of the same call unchanged, or leave it empty for the first page"
    )


def as_of(stamp: Timestamp, field: str = "as_of") -> datetime:
    """A moment that has passed by the registry's clock: the log answers only for those."""
    try:
        moment = stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{field} is not a valid timestamp (seconds {stamp.seconds}, nanos {stamp.nanos})"
        ) from None
    now = datetime.now(UTC)
    if moment > now:
        raise InvalidArgument(
            f"{field} is in the future ({moment.isoformat()}; the registry's clock reads "
            f"{now.isoformat()}): what an alias will point to is not known yet. Leave {field} "
            "unset for the alias now, or pass a time that has passed"
        )
    return moment


def _text(value: str, field: str) -> str:
    if len(value) > _MAX_TEXT:
        raise InvalidArgument(f"{field} must be at most {_MAX_TEXT} characters")
    return value
