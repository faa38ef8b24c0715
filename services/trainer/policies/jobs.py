"""EvaluatePolicy and LearnPolicy: logs from inference, files from the registry, the
numbers from a child process, a learned version registered with its estimates.

Evaluation of version V of policy P on a window: V's ``policy.json`` and ``model.onnx``
score every logged context (re-encoded with V's ``preprocessing.json``), and
``libs.decisioning.evaluate`` estimates V's value beside the logging policy's realised
one. Learning: the production version's preprocessing and actions, a new spec (the
caller's, or production's with a fresh salt), ``learn_policy`` on the older part of the
window and evaluation on the newest part (``holdout``), then registration with the
held-out estimates as metrics — ``opl.logging_version`` names the version whose
decisions they were (production, when every decision was its own; 0 when the window
mixes versions, which the registry's policy-value gate refuses).

A window left open at its end ends where the reward's censoring window settled every
decision's reward (``window``); ``opl.excluded_pending`` counts the decisions an explicit
later end left out for want of a reward (the gate refuses a version with any). Nothing
read from the clock is a metric: a retried LearnPolicy must ask the registry for the same
version.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from uuid6 import uuid7

from lathe.inference.v1 import request_response_pb2 as irr
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from lathe.model_registry.v1 import message_pb2 as reg
from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from lathe.trainer.v1 import message_pb2
from libs.decisioning.gate import PENDING_METRIC
from libs.decisioning.spec import PolicySpec, PolicySpecError
from libs.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from libs.grpckit import open_channel
from libs.preprocessing import PreprocessingSpec
from libs.sdk.model_registry import ArtifactUpload, RegistryClient, VersionSpec
from services.trainer.policies.decisions import Assembled, DecisionLogError, assemble, newest
from services.trainer.policies.window import UnsettledWindow, bounds, unsettled_message
from services.trainer.policies.worker import save_logs

_REPO_ROOT = Path(__file__).resolve().parents[3]
ESTIMATORS = ("ips", "snips", "dr", "dm", "logging", "dr_gain")
POLICY_FILE = "policy.json"
PREPROCESSING_FILE = "preprocessing.json"
MODEL_FILE = "model.onnx"
ACTOR = "trainer"


@dataclass(frozen=True)
class PolicyFiles:
    version: reg.ModelVersion
    spec: PolicySpec
    preprocessing: PreprocessingSpec
    preprocessing_json: bytes
    onnx: bytes


class PolicyJobs:
    def __init__(
        self,
        registry_address: str,
        inference_address: str,
        token: str = "",
        *,
        work_root: Path,
        timeout_s: float = 600.0,
    ) -> None:
        self._registry = registry_address
        self._inference = inference_address
        self._token = token
        self._work_root = work_root
        self._timeout_s = timeout_s

    # -- the two jobs ----------------------------------------------------------------------

    async def evaluate(
        self, model_name: str, version: int, window: irr.ListDecisionsRequest
    ) -> tuple[int, message_pb2.PolicyEvaluation]:
        async with open_channel(self._registry) as channel:
            stub = ModelRegistryStub(channel)
            files = await _policy_files(stub, model_name, version)
            production = await _production(stub, model_name)
        assembled = await self._assembled(window, files)
        metrics = await self._run(
            "evaluate", files.spec.to_json(), assembled, {"target.onnx": files.onnx}
        )
        return files.version.version, _evaluation(metrics, assembled, production)

    async def learn(
        self,
        model_name: str,
        window: irr.ListDecisionsRequest,
        *,
        policy_json: str,
        holdout: float,
        seed: int,
        request_id: str,
        description: str,
    ) -> tuple[int, message_pb2.PolicyEvaluation]:
        async with open_channel(self._registry) as channel:
            stub = ModelRegistryStub(channel)
            production = await _production(stub, model_name)
            if not production:
                raise FailedPrecondition(
                    f"{model_name} has no production version: learning starts from the "
                    "decisions of the policy in production"
                )
            files = await _policy_files(stub, model_name, production)
            spec = _new_spec(files.spec, policy_json, model_name)
            assembled = await self._assembled(window, files)
            if assembled.logs.rows < 10:
                raise FailedPrecondition(
                    f"only {assembled.logs.rows} decisions with rewards in the window; "
                    "learning needs more (widen the window or wait for rewards)"
                )
            mask = newest(assembled.decide_times, holdout)
            out = await self._run(
                "learn",
                spec.to_json(),
                assembled,
                {},
                holdout=mask,
                extra={
                    "cardinalities": [c.cardinality for c in files.preprocessing.categorical],
                    "seed": seed,
                },
                keep=(MODEL_FILE, POLICY_FILE),
            )
            metrics = out
            evaluation = _evaluation(metrics, assembled, production)
            onnx_format, json_format = reg.ARTIFACT_FORMAT_ONNX, reg.ARTIFACT_FORMAT_JSON
            artifacts = {
                MODEL_FILE: ArtifactUpload(onnx_format, content=out.files[MODEL_FILE]),
                PREPROCESSING_FILE: ArtifactUpload(json_format, content=files.preprocessing_json),
                POLICY_FILE: ArtifactUpload(json_format, content=out.files[POLICY_FILE]),
            }
            lineage = reg.Lineage()
            lineage.CopyFrom(files.version.lineage)
            lineage.training_job_id = f"policy-{request_id or uuid7()}"
            client = RegistryClient(stub, actor=ACTOR, token=self._token)
            try:
                registered = await client.register_version(
                    VersionSpec(
                        model_name=model_name,
                        signature=files.version.signature,
                        metrics=dict(evaluation.metrics),
                        description=description
                        or f"learned off-policy from v{production}'s decisions",
                        tags={"policy.learned_from": str(production)},
                        lineage=lineage,
                    ),
                    artifacts,
                    request_id=_registration_id(request_id),
                )
            except grpc.aio.AioRpcError as error:
                raise _unavailable("the model registry", error) from None
        return int(registered.version), evaluation

    # -- parts -----------------------------------------------------------------------------

    async def _assembled(self, window: irr.ListDecisionsRequest, files: PolicyFiles) -> Assembled:
        decisions = await self._decisions(window)
        try:
            return assemble(decisions, files.preprocessing, files.spec.action_names)
        except DecisionLogError as exc:
            raise FailedPrecondition(str(exc)) from None

    async def _decisions(self, request: irr.ListDecisionsRequest) -> list[irr.LoggedDecision]:
        """The window's decisions, ending where rewards settled unless the caller chose
        an end (a first one-row page of the window as asked says the reward's censoring
        window, and whether there is any decision at all)."""
        reward = f"{request.reward_definition}@{request.reward_definition_version}"
        start = request.start_time.ToDatetime(UTC) if request.HasField("start_time") else None
        end = request.end_time.ToDatetime(UTC) if request.HasField("end_time") else None
        out: list[irr.LoggedDecision] = []
        page = irr.ListDecisionsRequest()
        page.CopyFrom(request)
        async with open_channel(self._inference) as channel:
            stub = InferenceStub(channel)
            page.page_size = 1
            first = await _list(stub, page)
            window_s = first.censoring_window_s
            try:
                span = bounds(
                    start, end, now=datetime.now(UTC), censoring_window_s=window_s, reward=reward
                )
            except UnsettledWindow as exc:
                raise FailedPrecondition(str(exc)) from None
            if not span.explicit_end:
                page.end_time.FromDatetime(span.end)
            page.page_size = 5000
            while True:
                answer = await _list(stub, page)
                out.extend(answer.decisions)
                if not answer.next_page_token:
                    break
                page.page_token = answer.next_page_token
        if first.decisions and not out and not span.explicit_end:
            raise FailedPrecondition(unsettled_message(start, span.settled, window_s, reward))
        return out

    async def _run(
        self,
        mode: str,
        policy_json: bytes,
        assembled: Assembled,
        files: dict[str, bytes],
        *,
        holdout: object | None = None,
        extra: dict[str, object] | None = None,
        keep: tuple[str, ...] = (),
    ) -> _Metrics:
        self._work_root.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix=f"policy-{mode}-", dir=self._work_root))
        try:
            job = {"mode": mode, "policy_json": policy_json.decode(), **(extra or {})}
            (directory / "job.json").write_text(json.dumps(job))
            save_logs(directory / "logs.npz", assembled.logs, holdout)  # type: ignore[arg-type]
            for name, content in files.items():
                (directory / name).write_bytes(content)
            await self._child(directory)
            result = json.loads((directory / "result.json").read_text())
            if "error" in result:
                raise FailedPrecondition(f"the policy job refused the logs: {result['error']}")
            metrics = _Metrics(result["metrics"])
            metrics.files = {name: (directory / name).read_bytes() for name in keep}
            return metrics
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    async def _child(self, directory: Path) -> None:
        paths = [str(_REPO_ROOT), str(_REPO_ROOT / "gen" / "python")]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.trainer.policies.worker",
            str(directory),
            cwd=_REPO_ROOT,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), self._timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise Unavailable(
                f"the policy job ran past {self._timeout_s:g} s and was stopped; narrow the window"
            ) from None
        if process.returncode != 0:
            tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"the policy worker crashed: {' | '.join(tail)}")


class _Metrics(dict):  # type: ignore[type-arg]
    """The worker's metrics, and the files it was asked to keep."""

    files: dict[str, bytes]


async def _list(stub: InferenceStub, page: irr.ListDecisionsRequest) -> irr.ListDecisionsResponse:
    try:
        return await stub.ListDecisions(page, timeout=60)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidArgument(f"logs: {error.details()}") from None
        raise _unavailable("the inference service", error) from None


async def _policy_files(stub: ModelRegistryStub, model_name: str, version: int) -> PolicyFiles:
    try:
        if not version:
            page = await stub.ListModelVersions(
                reg_rr.ListModelVersionsRequest(model_name=model_name, page_size=1), timeout=30
            )
            if not page.model_versions:
                raise NotFound(f"{model_name} has no versions")
            version = page.model_versions[0].version
        meta = (
            await stub.GetModelVersion(
                reg_rr.GetModelVersionRequest(model_name=model_name, version=version), timeout=30
            )
        ).model_version
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            raise NotFound(error.details() or f"no {model_name} v{version}") from None
        raise _unavailable("the model registry", error) from None
    names = {a.name for a in meta.artifacts}
    needed = [n for n in (POLICY_FILE, PREPROCESSING_FILE, MODEL_FILE) if n not in names]
    if needed:
        raise FailedPrecondition(
            f"{model_name} v{version} is not a policy version: it lacks {needed} "
            "(docs/decisioning.md)"
        )
    client = RegistryClient(stub)
    try:
        content = {
            n: (await client.download(model_name, version, n)).content
            for n in (POLICY_FILE, PREPROCESSING_FILE, MODEL_FILE)
        }
    except grpc.aio.AioRpcError as error:
        raise _unavailable("the model registry", error) from None
    try:
        spec = PolicySpec.from_json(content[POLICY_FILE] or b"")
    except PolicySpecError as exc:
        raise FailedPrecondition(f"{model_name} v{version}'s policy.json: {exc}") from None
    preprocessing_json = content[PREPROCESSING_FILE] or b""
    return PolicyFiles(
        meta,
        spec,
        PreprocessingSpec.from_json(preprocessing_json),
        preprocessing_json,
        content[MODEL_FILE] or b"",
    )


async def _production(stub: ModelRegistryStub, model_name: str) -> int:
    try:
        answer = await stub.ResolveAlias(
            reg_rr.ResolveAliasRequest(model_name=model_name, alias="production"), timeout=30
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return 0
        raise _unavailable("the model registry", error) from None
    return int(answer.alias.version)


def _new_spec(production: PolicySpec, policy_json: str, model_name: str) -> PolicySpec:
    if not policy_json:
        document = json.loads(production.to_json())
        document["salt"] = f"{model_name}-{uuid7()}"
        return PolicySpec.from_json(json.dumps(document))
    try:
        spec = PolicySpec.from_json(policy_json)
    except PolicySpecError as exc:
        raise InvalidArgument(f"policy_json: {exc}") from None
    if spec.action_names != production.action_names:
        raise InvalidArgument(
            f"policy_json has actions {list(spec.action_names)} but the logs' policy has "
            f"{list(production.action_names)}: a learned policy acts over the logged actions"
        )
    return spec


def _evaluation(
    metrics: dict[str, float], assembled: Assembled, production: int
) -> message_pb2.PolicyEvaluation:
    excluded = assembled.excluded
    logging_version = production if assembled.versions == (production,) else 0
    full = {
        **{k: float(v) for k, v in metrics.items()},
        "opl.logging_version": float(logging_version),
        PENDING_METRIC: float(excluded.pending),
        "opl.excluded_censored": float(excluded.censored),
        "opl.excluded_bad_distribution": float(excluded.bad_distribution),
    }
    out = message_pb2.PolicyEvaluation(
        rows=int(metrics.get("ope.rows", 0)),
        effective_sample_size=metrics.get("ope.ess", 0.0),
        max_weight=metrics.get("ope.max_weight", 0.0),
        unsupported_mass=metrics.get("ope.unsupported_mass", 0.0),
        production_version=production,
        excluded_pending=excluded.pending,
        excluded_censored=excluded.censored,
        excluded_bad_distribution=excluded.bad_distribution,
        metrics=full,
    )
    for name in ESTIMATORS:
        out.estimates.add(
            estimator=name,
            value=metrics[f"ope.{name}.value"],
            std_error=metrics[f"ope.{name}.std_error"],
            lower=metrics[f"ope.{name}.lower"],
            upper=metrics[f"ope.{name}.upper"],
        )
    return out


def _registration_id(request_id: str) -> str:
    """The registry request id of a LearnPolicy call with a client request id: a retry
    registers nothing new (the learner is deterministic for a seed, so it asks for the
    same version) and gets the first call's version."""
    if not request_id:
        return ""
    return "trainer-policy-" + hashlib.sha256(request_id.encode()).hexdigest()[:40]


def _unavailable(what: str, error: grpc.aio.AioRpcError) -> Unavailable:
    return Unavailable(f"{what} answered {error.code().name}: {error.details()}")
