"""A service calling Predict: the loan-servicing backend scoring loans with the model
the underwriting team has in production.

It needs nothing of Lathe but the published protos (``gen/python``) and ``grpcio``:

    PYTHONPATH=gen/python .venv/bin/python examples/predict_client.py LC00001 LC00002

Without ``--model`` it scores with the predictor the inference service activated most
recently in production (after `lathe demo`: the demo's ``credit-default-...``, not its
``credit-line-...`` policy). The inference service does not say which models are
policies; the model registry does: a version is a policy when it carries ``policy.json``
(or, registered before that, a ``policy.actions`` tag). Every call sets a deadline;
UNAVAILABLE (a version still loading, a replica restarting) is retried briefly with the
same decision ids, so a retry is the same decision.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from dataclasses import dataclass

import grpc

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.inference.v1 import message_pb2 as m
from lathe.inference.v1 import request_response_pb2 as rr
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub

DEADLINE_S = 2.0


@dataclass(frozen=True)
class Score:
    loan_id: str
    probability: float
    model_version: int
    arm: str
    decision_id: str


async def production_model(stub: InferenceStub, registry: ModelRegistryStub) -> str:
    """The predictor (not a policy) most recently activated in production, warm."""
    reply = await stub.ListDeployments(rr.ListDeploymentsRequest(), timeout=DEADLINE_S)
    served = [
        d for d in reply.deployments if d.alias == "production" and d.warm and d.serving_version
    ]
    served.sort(key=lambda d: (d.activate_time.seconds, d.activate_time.nanos), reverse=True)
    for d in served:
        if not await is_policy(registry, d.model_name, d.serving_version):
            return d.model_name
    raise SystemExit("no predictor is in production yet: run `lathe demo` (or promote one)")


async def is_policy(registry: ModelRegistryStub, model: str, version: int) -> bool:
    """Whether the version decides (Decide) rather than predicts: it has policy.json
    (or a policy.actions tag)."""
    reply = await registry.GetModelVersion(
        reg_rr.GetModelVersionRequest(model_name=model, version=version), timeout=DEADLINE_S
    )
    found = reply.model_version
    return any(a.name == "policy.json" for a in found.artifacts) or bool(
        found.tags.get("policy.actions", "").strip()
    )


async def score(stub: InferenceStub, model: str, loans: list[str]) -> tuple[list[Score], str]:
    """Scores of ``loans`` and the request's trace id (for `lathe trace`)."""
    request = rr.PredictRequest(
        model_name=model,
        rows=[
            m.PredictionInput(
                entity_keys={"loan_id": fs.Value(string_value=loan)},
                decision_id=str(uuid.uuid4()),  # fixed before the first try
            )
            for loan in loans
        ],
    )
    for attempt in range(3):
        try:
            reply = await stub.Predict(request, timeout=DEADLINE_S)
            break
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                raise
            await asyncio.sleep(0.1 * 2**attempt)
    scores = [
        Score(
            loan,
            p.scores[0],
            p.model_version,
            m.Arm.Name(p.arm).removeprefix("ARM_").lower(),
            p.decision_id,
        )
        for loan, p in zip(loans, reply.predictions, strict=True)
    ]
    return scores, reply.trace_id


async def run(
    address: str, registry_address: str, model: str, loans: list[str]
) -> tuple[str, list[Score], str]:
    """The model scored with, the scores of ``loans`` and the request's trace id."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = InferenceStub(channel)
        if not model:
            async with grpc.aio.insecure_channel(registry_address) as registry:
                model = await production_model(stub, ModelRegistryStub(registry))
        scores, trace_id = await score(stub, model, loans)
        return model, scores, trace_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("loans", nargs="+", help="loan ids, e.g. LC00001")
    parser.add_argument(
        "--model",
        default="",
        help="the model to score with (default: the predictor activated last in production)",
    )
    parser.add_argument(
        "--address", default=os.environ.get("LATHE_INFERENCE_ADDR", "127.0.0.1:50054")
    )
    parser.add_argument(
        "--registry-address",
        default=os.environ.get("LATHE_MODEL_REGISTRY_ADDR", "127.0.0.1:50052"),
        help="the model registry, asked which models are policies (unused with --model)",
    )
    args = parser.parse_args()
    try:
        model, scores, trace_id = asyncio.run(
            run(args.address, args.registry_address, args.model, args.loans)
        )
    except grpc.aio.AioRpcError as error:
        raise SystemExit(f"{error.code().name}: {error.details()}") from None
    print(f"model {model}")
    for s in scores:
        print(
            f"{s.loan_id}: p(bad) {s.probability:.4f} "
            f"(v{s.model_version}, {s.arm}, decision {s.decision_id})"
        )
    print(f"trace {trace_id}")


if __name__ == "__main__":
    main()
