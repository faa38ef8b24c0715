"""Loading one version: download + verify, preprocessing, runtime, warm-up, parity.

Every stage that fails raises ``LoadFailure`` naming the stage (download, verify, load,
build, warm, parity) and why, whatever the error inside it was (an ONNX Runtime refusal
of the fixed rows is ``load``, a runtime failing its parity run is ``parity``); the
deployment then keeps serving what it served and records the failure. Only a registry
outage (``Unavailable``) is not a refusal: the loader retries it. The runtime is the
first of the selected candidates that builds and matches ONNX Runtime on the version's
fixed rows (``domain.fixed_rows``): a GPU runtime that cannot be built or does not
match falls back to the next, with the reason kept; ONNX Runtime on CPU is held to the
unoptimised reference session, and failing that refuses the version.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import onnx

from libs.decisioning.spec import PolicySpec, PolicySpecError
from libs.errors import NotFound
from libs.preprocessing import PreprocessingSpec, sequence_inputs
from services.inference.app.model import (
    CATEGORICAL_INPUT,
    NUMERIC_INPUT,
    LoadedModel,
    RawRows,
    VersionFiles,
    flatten_outputs,
)
from services.inference.domain.fixed_rows import reference_times, representative_columns
from services.inference.domain.parity import ParityResult, compare, tolerance
from services.inference.domain.policies import ServedPolicy, decide, locate
from services.inference.runtimes.base import ONNXRUNTIME_CPU, RuntimeUnavailable
from services.inference.runtimes.build import BuildOptions, EngineCache, build_runtime
from services.inference.runtimes.onnx_cpu import OnnxCpuRuntime, reference_session
from services.inference.runtimes.selection import plan_runtimes
from services.inference.store.registry import ArtifactRefused, RegistryGateway

_log = logging.getLogger(__name__)
MODEL_FILE = "model.onnx"
PREPROCESSING_FILE = "preprocessing.json"
POLICY_FILE = "policy.json"
PARITY_ROWS = 64
SINGLE_ROW_CHECKS = 8
WARM_BATCHES = (1, 8, 64)


class LoadFailure(Exception):
    """The version cannot serve: refused at ``stage`` because of ``reason``."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class Loaded:
    model: LoadedModel
    parity: ParityResult
    seconds: float


async def load_version(
    registry: RegistryGateway,
    model_name: str,
    version: int,
    *,
    preference: tuple[str, ...],
    options: BuildOptions,
    engines: EngineCache | None,
) -> Loaded:
    started = time.perf_counter()
    files = await download(registry, model_name, version)
    loaded = await asyncio.to_thread(build, files, preference, options, engines)
    return Loaded(loaded.model, loaded.parity, time.perf_counter() - started)


async def download(registry: RegistryGateway, model_name: str, version: int) -> VersionFiles:
    try:
        meta = await registry.version(model_name, version)
    except NotFound as exc:
        raise LoadFailure("download", str(exc)) from None
    artifacts = {a.name: a for a in meta.artifacts}
    missing = [n for n in (MODEL_FILE, PREPROCESSING_FILE) if n not in artifacts]
    if missing:
        raise LoadFailure(
            "download",
            f"{model_name} v{version} lacks {missing}: a servable version carries model.onnx "
            "and the preprocessing.json it was trained with",
        )
    try:
        onnx_bytes = await registry.download(model_name, version, artifacts[MODEL_FILE])
        spec_bytes = await registry.download(model_name, version, artifacts[PREPROCESSING_FILE])
        policy_bytes = b""
        if POLICY_FILE in artifacts:
            policy_bytes = await registry.download(model_name, version, artifacts[POLICY_FILE])
    except ArtifactRefused as exc:
        raise LoadFailure(exc.stage, str(exc)) from None
    try:
        spec = PreprocessingSpec.from_json(spec_bytes)
    except (ValueError, KeyError, TypeError) as exc:
        raise LoadFailure("load", f"preprocessing.json does not load: {exc}") from None
    return VersionFiles(
        model_name=model_name,
        version=version,
        onnx=onnx_bytes,
        onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        preprocessing=spec,
        feature_service=meta.lineage.feature_service,
        feature_service_version=meta.lineage.feature_service_version,
        tags=dict(meta.tags),
        policy_json=policy_bytes,
    )


def build(
    files: VersionFiles,
    preference: tuple[str, ...],
    options: BuildOptions,
    engines: EngineCache | None,
) -> Loaded:
    """Blocking: the first candidate runtime that builds, warms and matches ONNX Runtime."""
    started = time.perf_counter()
    output_graph_names = _check_graph(files)
    try:
        reference = reference_session(files.onnx)
    except Exception as exc:  # an ONNX Runtime refusal: the graph does not load
        raise LoadFailure("load", f"{MODEL_FILE} does not load in ONNX Runtime: {exc}") from None
    rows, expected, expected_single = _reference_run(files, reference, output_graph_names)
    output_names = _output_names(output_graph_names, flatten_outputs(expected, rows.rows))
    policy = _policy(files, output_graph_names, expected, rows.rows)
    plan = plan_runtimes(preference, options.caps)
    notes: list[str] = list(plan.skipped)
    for candidate in plan.candidates:
        reason = candidate.reason if not notes else f"{candidate.reason} ({'; '.join(notes)})"
        if candidate.runtime == ONNXRUNTIME_CPU:
            reason = "the default" if not notes else "fallback: " + "; ".join(notes)
        try:
            runtime = build_runtime(
                candidate.runtime, files.onnx, files.onnx_sha256, options, engines, reason
            )
        except RuntimeUnavailable as exc:
            notes.append(f"{candidate.runtime}: {exc}")
            continue
        except Exception as exc:
            if candidate.runtime == ONNXRUNTIME_CPU:
                raise LoadFailure("build", f"ONNX Runtime could not build it: {exc}") from None
            notes.append(f"{candidate.runtime}: build failed: {exc}")
            continue
        model = LoadedModel(files, runtime, output_names, policy)
        try:
            _warm(model, rows)
        except Exception as exc:
            runtime.close()
            if candidate.runtime == ONNXRUNTIME_CPU:
                raise LoadFailure("warm", f"warm-up failed: {exc}") from None
            notes.append(f"{candidate.runtime}: warm-up failed: {exc}")
            continue
        try:
            parity = _parity(model, rows, expected, expected_single, runtime.info.precision)
        except Exception as exc:  # the runtime failed on a batch it had warmed up at
            runtime.close()
            if candidate.runtime == ONNXRUNTIME_CPU:
                raise LoadFailure("parity", f"the parity run failed: {exc}") from None
            notes.append(f"{candidate.runtime}: parity run failed: {exc}")
            continue
        if parity.ok:
            _log.info(
                "%s v%d on %s: %s (%.2fs)",
                files.model_name,
                files.version,
                runtime.info.name,
                parity.explain(runtime.info.name),
                time.perf_counter() - started,
            )
            return Loaded(model, parity, time.perf_counter() - started)
        runtime.close()
        if candidate.runtime == ONNXRUNTIME_CPU:
            raise LoadFailure("parity", parity.explain(f"{files.model_name} v{files.version}"))
        notes.append(f"{candidate.runtime}: {parity.explain(candidate.runtime)}")
    raise LoadFailure("build", "no runtime could serve it: " + "; ".join(notes))


def _reference_run(
    files: VersionFiles, reference: OnnxCpuRuntime, graph_outputs: tuple[str, ...]
) -> tuple[RawRows, list[np.ndarray], list[list[np.ndarray]]]:
    """The fixed rows and the reference session's outputs for them, at batch 64 and 1.

    Stage ``load``: a graph that ONNX Runtime accepts can still refuse the inputs
    preprocessing.json produces (an input declared double where it gives float32) or give
    outputs that are not one row per input row; either way the version cannot serve.
    """
    try:
        probe = LoadedModel(files, reference, ())
        rows = probe.rows_from_columns(
            representative_columns(files.preprocessing, PARITY_ROWS),
            reference_times(files.preprocessing, PARITY_ROWS),
        )
        expected = reference.run(probe.feeds(rows))
        expected_single = [
            reference.run(probe.feeds(rows.slice(i, i + 1))) for i in range(SINGLE_ROW_CHECKS)
        ]
    except Exception as exc:
        raise LoadFailure(
            "load", f"{MODEL_FILE} does not run on the rows preprocessing.json produces: {exc}"
        ) from None
    for name, output in zip(graph_outputs, expected, strict=False):
        shape = np.shape(output)
        if shape[:1] != (rows.rows,):
            raise LoadFailure(
                "load",
                f"{MODEL_FILE} output {name!r} has shape {list(shape)} for {rows.rows} rows: "
                "its first axis must be the batch",
            )
    return rows, expected, expected_single


def _policy(
    files: VersionFiles, graph_outputs: tuple[str, ...], expected: list[np.ndarray], rows: int
) -> ServedPolicy | None:
    """The version's policy (``policy.json``, else the older ``policy.*`` tags), checked on
    the fixed rows: every row's distribution must be one (sums to 1)."""
    version = f"{files.model_name} v{files.version}"
    try:
        if files.policy_json:
            spec: PolicySpec | None = PolicySpec.from_json(files.policy_json)
        else:
            spec = PolicySpec.from_tags(files.model_name, files.tags)
    except PolicySpecError as exc:
        raise LoadFailure("load", f"{POLICY_FILE} of {version} does not load: {exc}") from None
    if spec is None:
        return None
    widths = [int(np.asarray(o).reshape(rows, -1).shape[1]) for o in expected]
    try:
        policy = locate(spec, graph_outputs, widths, version)
        flat = flatten_outputs(expected, rows)
        decide(policy, flat, [()] * rows, [f"load-check-{i}" for i in range(rows)])
    except ValueError as exc:  # PolicyRefused included
        raise LoadFailure("load", f"{version} is not a usable policy: {exc}") from None
    return policy


def _check_graph(files: VersionFiles) -> tuple[str, ...]:
    try:
        graph = onnx.load_from_string(files.onnx).graph
    except Exception as exc:
        raise LoadFailure("load", f"{MODEL_FILE} is not an ONNX model: {exc}") from None
    spec = files.preprocessing
    shapes: dict[str, tuple[int, ...]] = {
        NUMERIC_INPUT: (len(spec.numeric),),
        CATEGORICAL_INPUT: (len(spec.categorical),),
    }
    for s in spec.sequences:
        values, codes, mask = sequence_inputs(s.name)
        shapes[values] = (s.max_length, len(s.numeric))
        shapes[codes] = (s.max_length, len(s.categorical))
        shapes[mask] = (s.max_length,)
    for graph_input in graph.input:
        if graph_input.name not in shapes:
            raise LoadFailure(
                "load",
                f"{MODEL_FILE} input {graph_input.name!r} is not one preprocessing.json "
                f"produces ({', '.join(shapes)})",
            )
        dims = graph_input.type.tensor_type.shape.dim[1:]  # past the batch axis
        fixed = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        wanted = shapes[graph_input.name]
        if len(fixed) != len(wanted) or any(
            f not in (-1, w) for f, w in zip(fixed, wanted, strict=False)
        ):
            raise LoadFailure(
                "load",
                f"{MODEL_FILE} input {graph_input.name!r} is [batch, {_dims(fixed)}] but "
                f"preprocessing.json produces [batch, {_dims(wanted)}]",
            )
    return tuple(o.name for o in graph.output)


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join("?" if d < 0 else str(d) for d in shape)


def _output_names(graph_outputs: tuple[str, ...], flat: np.ndarray) -> tuple[str, ...]:
    if len(graph_outputs) == 1 and flat.shape[1] == 1:
        return graph_outputs
    if len(graph_outputs) == 1:
        return tuple(f"{graph_outputs[0]}[{i}]" for i in range(flat.shape[1]))
    return tuple(f"output[{i}]" for i in range(flat.shape[1]))


def _warm(model: LoadedModel, rows: RawRows) -> None:
    """Run the fixed rows at several batch sizes; seed the cost model from the timings."""
    for size in WARM_BATCHES:
        part = rows.slice(0, size)
        for _ in range(3):
            started = time.perf_counter()
            scores = model.score(part)
            model.cost.observe(part.rows, time.perf_counter() - started)
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"non-finite outputs at batch {size}")


def _parity(
    model: LoadedModel,
    rows: RawRows,
    expected: list[np.ndarray],
    expected_single: list[list[np.ndarray]],
    precision: str,
) -> ParityResult:
    tol = tolerance(precision)
    batch = compare(expected, model.runtime.run(model.feeds(rows)), tol)
    if not batch.ok:
        return batch
    for i, reference in enumerate(expected_single):
        single = compare(reference, model.runtime.run(model.feeds(rows.slice(i, i + 1))), tol)
        if not single.ok:
            return ParityResult(single.max_abs_diff, tol, i, " (a single-row batch)")
        batch = max(batch, single, key=lambda r: r.max_abs_diff)
    return batch
