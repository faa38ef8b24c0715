"""What the kit reads from the protos, and how errors map to status codes."""

from __future__ import annotations

import grpc
import pytest

from lathe.model_registry.v1 import service_pb2 as registry
from lathe.trainer.v1 import service_pb2 as trainer
from libs import errors
from libs.eventstore import WrongExpectedVersion
from libs.grpckit import mutating_methods, status_code_for

REGISTRY = registry.DESCRIPTOR.services_by_name["ModelRegistry"]


def test_mutating_methods_are_those_not_marked_no_side_effects() -> None:
    prefix = "/lathe.model_registry.v1.ModelRegistry/"
    assert mutating_methods(REGISTRY) == {
        prefix + name
        for name in (
            "CreateModel",
            "SetPromotionPolicy",
            "RegisterModelVersion",
            "SetAlias",
            "DeleteAlias",
            "ApproveModelVersion",
        )
    }


def test_every_public_service_has_the_published_name() -> None:
    assert REGISTRY.full_name == "lathe.model_registry.v1.ModelRegistry"
    assert trainer.DESCRIPTOR.services_by_name["Trainer"].full_name == "lathe.trainer.v1.Trainer"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Conflict("x"), grpc.StatusCode.ABORTED),
        (WrongExpectedVersion("s", 1, 2), grpc.StatusCode.ABORTED),
        (errors.DataLoss("x"), grpc.StatusCode.DATA_LOSS),
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_domain_errors_map_to_precise_codes(
    error: errors.LatheError, code: grpc.StatusCode
) -> None:
    assert status_code_for(error) == code
