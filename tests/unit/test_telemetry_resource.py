"""Each process exports under an instance id of its own (``libs.telemetry.setup``)."""

from __future__ import annotations

import socket

from opentelemetry.sdk.resources import Resource

from libs.telemetry.setup import _instance_id


def test_the_deployment_given_id_is_kept_and_told_apart_per_process() -> None:
    given = Resource({"service.name": "inference", "service.instance.id": "inference-7f9c"})

    assert _instance_id(given, None) == "inference-7f9c"
    assert _instance_id(given, "0") == "inference-7f9c/0"
    assert _instance_id(given, "1") == "inference-7f9c/1"


def test_without_one_the_host_name_is_the_instance() -> None:
    assert _instance_id(Resource({"service.name": "inference"}), "2") == (
        f"{socket.gethostname()}/2"
    )
