"""The generic request checks the kit runs at decode time, compiled from the descriptors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import duration_pb2, empty_pb2, message_factory, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from lathe.feature_store.v1 import message_pb2 as fs_messages
from lathe.feature_store.v1 import request_response_pb2 as fs
from lathe.feature_store.v1 import service_pb2 as fs_service
from lathe.inference.v1 import service_pb2 as inference_service
from lathe.model_registry.v1 import request_response_pb2 as mr
from lathe.model_registry.v1 import service_pb2 as mr_service
from lathe.trainer.v1 import service_pb2 as trainer_service
from libs.errors import InvalidArgument
from libs.grpckit.decoding import Rejected, checked_deserializer
from libs.grpckit.request_checks import DURATION, TIMESTAMP, checks_for

MIN_S, MAX_S = -62_135_596_800, 253_402_300_799
TEN_THOUSAND_YEARS_S = 315_576_000_000


def _problem(message: Message) -> str | None:
    checks = checks_for(message.DESCRIPTOR)
    assert checks is not None
    return checks.problem(message, message.SerializeToString())


def _online(**entities: list[fs_messages.Value]) -> fs.GetOnlineFeaturesRequest:
    request = fs.GetOnlineFeaturesRequest(feature_service="credit")
    for key, values in entities.items():
        request.entities[key].values.extend(values)
    return request


def _text(value: str) -> fs_messages.Value:
    return fs_messages.Value(string_value=value)


def _at(seconds: int, nanos: int = 0) -> fs_messages.Value:
    return fs_messages.Value(timestamp_value=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))


@pytest.mark.parametrize(
    ("message", "path"),
    [
        (mr.GetModelRequest(name="a\x00b"), "name"),
        (mr.CreateModelRequest(name="m", tags={"team": "u\x00w"}), "tags['team']"),
        (mr.CreateModelRequest(name="m", tags={"te\x00am": "uw"}), "tags key 'te\\x00am'"),
        (fs.GetOnlineFeaturesRequest(feature_service="\x00"), "feature_service"),
        (
            fs.GetOnlineFeaturesRequest(feature_list=fs.FeatureList(features=["v:a", "v:\x00"])),
            "feature_list.features[1]",
        ),
        (
            _online(loan_id=[_text("L-1"), _text("L-\x002")]),
            "entities['loan_id'].values[1].string_value",
        ),
        (_online(**{"loan\x00id": [_text("L-1")]}), "entities key 'loan\\x00id'"),
        (
            mr.RegisterModelVersionRequest(
                metadata=mr.ModelVersionMetadata(
                    model_name="m",
                    artifacts=[
                        mr.ArtifactDeclaration(name="ok"),
                        mr.ArtifactDeclaration(name="\0"),
                    ],
                )
            ),
            "metadata.artifacts[1].name",
        ),
    ],
)
def test_nul_in_any_string_is_found_with_its_path(message: Message, path: str) -> None:
    problem = _problem(message)

    assert problem is not None
    assert problem.startswith(f"{path} contains a NUL character")


def test_recursive_types_are_walked_without_looping() -> None:
    nested = struct_pb2.Struct()
    nested.update({"a": {"b": [1, "fine", {"c": "bad\x00"}]}})

    assert _problem(nested) == (
        "fields['a'].struct_value.fields['b'].list_value.values[2].struct_value"
        ".fields['c'].string_value contains a NUL character (\\x00), which text cannot hold; "
        "remove it"
    )


@pytest.mark.parametrize(
    "message",
    [
        mr.CreateModelRequest(name="m", description="é 日本 \t\n", tags={"team": "uw"}),
        _online(loan_id=[_text("L-1"), _at(MIN_S), _at(MAX_S, 999_999_999)]),
        mr.ResolveAliasRequest(model_name="m", alias="prod", as_of=timestamp_pb2.Timestamp()),
        # Zero bytes in the encoding that are not text: the NUL walk runs and finds nothing.
        _online(n=[fs_messages.Value(float64_value=1.0), fs_messages.Value(int64_value=256)]),
    ],
)
def test_valid_messages_pass(message: Message) -> None:
    assert _problem(message) is None


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(MAX_S + 1, 0), (MIN_S - 1, 0), (0, -1), (0, 1_000_000_000), (2**62, 0)],
)
def test_timestamps_outside_protobufs_range_are_found(seconds: int, nanos: int) -> None:
    as_of = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    problem = _problem(mr.ResolveAliasRequest(model_name="m", alias="a", as_of=as_of))
    assert problem is not None
    assert problem.startswith("as_of is outside the range of a google.protobuf.Timestamp")

    nested = _problem(_online(loan_id=[_text("L-1"), _at(seconds, nanos)]))
    assert nested is not None
    assert nested.startswith("entities['loan_id'].values[1].timestamp_value is outside")


@pytest.mark.parametrize(
    ("seconds", "nanos", "valid"),
    [
        (TEN_THOUSAND_YEARS_S, 999_999_999, True),
        (-TEN_THOUSAND_YEARS_S, -999_999_999, True),
        (TEN_THOUSAND_YEARS_S + 1, 0, False),
        (0, 1_000_000_000, False),
        (1, -1, False),  # nanos must have the sign of seconds
        (-1, 1, False),
    ],
)
def test_duration_range(seconds: int, nanos: int, valid: bool) -> None:
    view = fs_messages.FeatureView(
        name="v", ttl=duration_pb2.Duration(seconds=seconds, nanos=nanos)
    )
    request = fs.ApplyDefinitionsRequest(
        repository=fs_messages.FeatureRepository(feature_views=[fs_messages.FeatureView(), view])
    )
    problem = _problem(request)
    if valid:
        assert problem is None
    else:
        assert problem is not None
        assert problem.startswith(
            "repository.feature_views[1].ttl is outside the range of a google.protobuf.Duration"
        )


def test_types_without_text_or_times_get_no_checks() -> None:
    assert checks_for(empty_pb2.Empty.DESCRIPTOR) is None
    assert checks_for(fs_messages.FeatureRow.DESCRIPTOR) is not None  # values hold both


def test_bytes_that_are_not_the_message_are_rejected_by_name() -> None:
    decode = checked_deserializer(mr.GetModelRequest.FromString, streaming=False)

    rejected = decode(b"\xff\xff\xff\xff")

    assert isinstance(rejected, Rejected)
    assert rejected.message.startswith(
        "the request is not a valid lathe.model_registry.v1.GetModelRequest: its bytes do not "
        "parse as that message"
    )
    assert decode(mr.GetModelRequest(name="m").SerializeToString()) == mr.GetModelRequest(name="m")


def test_streamed_requests_raise_instead() -> None:
    decode = checked_deserializer(mr.RegisterModelVersionRequest.FromString, streaming=True)
    bad = mr.RegisterModelVersionRequest(chunk=mr.ArtifactChunk(name="a\x00", data=b"\x00"))

    with pytest.raises(InvalidArgument, match=r"chunk\.name contains a NUL"):
        decode(bad.SerializeToString())
    with pytest.raises(InvalidArgument, match="not a valid"):
        decode(b"\x0a\x05\xff")


def _service_inputs() -> list[Descriptor]:
    inputs = {}
    for module in (fs_service, mr_service, trainer_service, inference_service):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                inputs[method.input_type.full_name] = method.input_type
    return list(inputs.values())


Plant = Callable[[Any], None]


def _plantings(
    descriptor: Descriptor, leaf: str, seen: tuple[str, ...] = ()
) -> list[tuple[str, Plant]]:
    """(path, how to plant a bad value there) for every leaf field reachable from a type.

    ``leaf`` is "text" (a NUL in each string field) or "time" (each Timestamp and
    Duration field out of range). Recursive types are followed once.
    """
    if descriptor.full_name in seen:
        return []
    seen = (*seen, descriptor.full_name)
    found: list[tuple[str, Plant]] = []
    for field in descriptor.fields:
        name = field.name
        if field.type == FieldDescriptor.TYPE_STRING and leaf == "text":
            if field.is_repeated:
                found.append((f"{name}[0]", lambda m, n=name: getattr(m, n).append("\x00")))
            else:
                found.append((name, lambda m, n=name: setattr(m, n, "\x00")))
            continue
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        child = field.message_type
        if child.GetOptions().map_entry:
            value = child.fields_by_name["value"]
            if value.type == FieldDescriptor.TYPE_STRING and leaf == "text":
                found.append((f"{name}['k']", lambda m, n=name: getattr(m, n).update(k="\x00")))
            elif value.type == FieldDescriptor.TYPE_MESSAGE:
                found.extend(
                    (f"{name}['k'].{path}", lambda m, n=name, p=plant: p(getattr(m, n)["k"]))
                    for path, plant in _plantings(value.message_type, leaf, seen)
                )
            continue
        if child.full_name in (TIMESTAMP, DURATION):
            if leaf == "time":
                bad = _OUT_OF_RANGE[child.full_name]
                if field.is_repeated:
                    found.append((f"{name}[0]", lambda m, n=name, b=bad: getattr(m, n).append(b)))
                else:
                    found.append((name, lambda m, n=name, b=bad: getattr(m, n).CopyFrom(b)))
            continue
        for path, plant in _plantings(child, leaf, seen):
            if field.is_repeated:
                found.append(
                    (f"{name}[0].{path}", lambda m, n=name, p=plant: p(getattr(m, n).add()))
                )
            else:
                found.append((f"{name}.{path}", lambda m, n=name, p=plant: p(getattr(m, n))))
    return found


_OUT_OF_RANGE = {
    TIMESTAMP: timestamp_pb2.Timestamp(seconds=MAX_S + 1),
    DURATION: duration_pb2.Duration(seconds=TEN_THOUSAND_YEARS_S + 1),
}


@pytest.mark.parametrize("leaf", ["text", "time"])
def test_every_string_and_time_field_of_every_request_of_every_service_is_checked(
    leaf: str,
) -> None:
    planted = 0
    for descriptor in _service_inputs():
        message_class = message_factory.GetMessageClass(descriptor)
        for path, plant in _plantings(descriptor, leaf):
            message = message_class()
            plant(message)
            problem = _problem(message)
            assert problem is not None, (descriptor.full_name, path)
            assert problem.startswith(f"{path} "), (descriptor.full_name, path, problem)
            planted += 1
    assert planted > (100 if leaf == "text" else 5)  # the walk above found the fields
