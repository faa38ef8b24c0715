"""Where a Predict request's CPU goes, stage by stage, in one process (no servers).

Standalone, not a family: ``PYTHONPATH=gen/python:. .venv/bin/python -m bench.predict_stages
[--rows 1 256] [--repeat 200]``. It runs the inference service's own code for each stage
of one request on the bench's credit shapes (an entity key and a request feature per
row; 3 numeric + 1 categorical feature; the trainer's MLP and FT-Transformer exported as
the bench exports them) with a synthetic feature-store reply of the shape the feature
store sends, and prints the median µs per request (and per row) of each stage as JSON:

- ``request_decode``: ``PredictRequest.FromString`` of the request's bytes;
- ``request_check``: the kit's decode-time checks of it (``libs.grpckit.request_checks``:
  no NUL in text, timestamps in range), which every server runs on every request;
- ``validate``: ``validate.predict_call`` (rows -> columns);
- ``decision_ids_and_sampling``: generated decision ids and the log-sampling hash;
- ``fs_request_encode`` / ``fs_reply_decode``: the GetOnlineFeatures request built and
  serialized, its reply parsed (the feature store's own server time is not here: the
  bench's ``GetOnlineFeatures`` row measures it over gRPC; ``fs_request_check`` is the
  kit's check of that request in the feature store);
- ``missing``: the per-row missing-feature check;
- ``model_inputs``: ``LoadedModel.rows_from_reply`` (values -> float64 / strings);
- ``preprocess``: the compiled ``Preprocessor``; ``runtime``: ONNX Runtime;
- ``scores_out``: outputs to per-row lists; ``response_encode``: ``PredictResponse``
  built and serialized.

``floor`` is what any Predict of these rows in Python protobuf must pay whatever the
service does: decode the request, encode the feature request, decode the reply, encode
the response (built with the least work the wire format allows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.feature_store.v1 import request_response_pb2 as fsr
from lathe.inference.v1 import request_response_pb2 as rr
from libs.grpckit.request_checks import checks_for
from libs.preprocessing import PreprocessingSpec
from services.inference.api import validate
from services.inference.api.servicer import _response
from services.inference.app.model import LoadedModel, VersionFiles
from services.inference.app.predict import Predictor, PredictResult
from services.inference.domain.decision_ids import new_decision_ids
from services.inference.domain.routing import sampled_rows
from services.inference.runtimes.onnx_cpu import OnnxCpuRuntime
from tests.inference.helpers import Credit, export, row

_NAMES = ("apps:income", "apps:rate", "pay:monthly_interest", "apps:grade")


def _credit(rows: int = 400) -> Credit:
    rng = np.random.default_rng(0)
    income = rng.lognormal(10.5, 0.5, rows)
    rate = rng.uniform(5, 25, rows)
    grade = rng.choice(["A", "B", "C", "D"], rows)
    amount = rng.uniform(1000, 30000, rows)
    train: dict[str, list[object]] = {
        _NAMES[0]: income.tolist(),
        _NAMES[1]: rate.tolist(),
        _NAMES[2]: (amount * rate / 1200).tolist(),
        _NAMES[3]: grade.tolist(),
    }
    loans = tuple(f"L{i:05d}" for i in range(rows))
    return Credit("x", "credit_x", _NAMES, (_NAMES[3],), train, loans)


def _reply(credit: Credit, n: int) -> bytes:
    """A GetOnlineFeatures reply as the feature store sends it: stored values with their
    event times, the on-demand value without."""
    reply = fsr.GetOnlineFeaturesResponse(feature_names=list(_NAMES))
    present = fs.FEATURE_STATUS_PRESENT
    for i in range(n):
        vector = reply.results.add()
        t = credit.train
        vector.values.add(float64_value=t[_NAMES[0]][i])
        vector.values.add(float64_value=t[_NAMES[1]][i])
        vector.values.add(float64_value=t[_NAMES[2]][i])
        vector.values.add(string_value=str(t[_NAMES[3]][i]))
        vector.statuses.extend([present] * 4)
        for k in range(4):
            stamp = vector.event_times.add()
            if k != 2:
                stamp.seconds, stamp.nanos = 1_767_225_600 + i * 3600, 0
    return reply.SerializeToString()


def _median_us(fn: Callable[[], object], repeat: int) -> float:
    for _ in range(min(20, repeat)):
        fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


def stages(family: str, n: int, repeat: int) -> dict[str, float]:
    credit = _credit()
    onnx_bytes, _, spec_json = export(credit, family=family, seed=1)
    spec = PreprocessingSpec.from_json(spec_json)
    files = VersionFiles("m", 1, onnx_bytes, "", spec, "credit_x", "1", {})
    runtime = OnnxCpuRuntime(onnx_bytes, threads=1)
    model = LoadedModel(files, runtime, ("probability",))
    request_bytes = rr.PredictRequest(
        model_name="m", rows=[row(credit.loan_ids[i]) for i in range(n)]
    ).SerializeToString()
    reply_bytes = _reply(credit, n)
    request = rr.PredictRequest.FromString(request_bytes)
    call = validate.predict_call(request, max_rows=1024, time_remaining_s=5.0, trace_id="")
    reply = fsr.GetOnlineFeaturesResponse.FromString(reply_bytes)
    names, vectors = tuple(reply.feature_names), reply.results
    slots = tuple(range(len(names)))
    raw = model.rows_from_reply(names, vectors, 0)
    feeds = model.feeds(raw)
    outputs = runtime.run(feeds)
    scores = np.asarray(outputs[0], dtype=np.float64).reshape(n, -1)
    ids = new_decision_ids(n)
    result = PredictResult(
        scores.tolist(), [1] * n, [1] * n, ids, vectors, [()] * n, None, None, None, None,
        (), ("probability",), tuple(names), slots, names, 0.01,
    )  # fmt: skip

    def fs_request() -> bytes:
        entities = {k: fs.RepeatedValue(values=v) for k, v in call.entity_keys.items()}
        data = {k: fs.RepeatedValue(values=v) for k, v in call.request_features.items()}
        request = fsr.GetOnlineFeaturesRequest(
            entities=entities, request_data=data, feature_service="credit_x"
        )
        return request.SerializeToString()  # type: ignore[no-any-return]

    def ids_and_sampling() -> None:
        fresh = new_decision_ids(n)
        sampled_rows(fresh, 0.01)

    def least_response() -> bytes:
        response = rr.PredictResponse(output_names=["probability"], feature_names=list(names))
        add = response.predictions.add
        for i in range(n):
            add(scores=result.scores[i], model_version=1, arm=1, decision_id=ids[i])
        return response.SerializeToString()  # type: ignore[no-any-return]

    predict_checks = checks_for(rr.PredictRequest.DESCRIPTOR)
    fs_checks = checks_for(fsr.GetOnlineFeaturesRequest.DESCRIPTOR)
    fs_bytes = fs_request()
    fs_message = fsr.GetOnlineFeaturesRequest.FromString(fs_bytes)
    assert predict_checks is not None and fs_checks is not None
    timed = {
        "request_decode": lambda: rr.PredictRequest.FromString(request_bytes),
        "request_check": lambda: predict_checks.problem(request, request_bytes),
        "validate": lambda: validate.predict_call(
            request, max_rows=1024, time_remaining_s=5.0, trace_id=""
        ),
        "decision_ids_and_sampling": ids_and_sampling,
        "fs_request_encode": fs_request,
        "fs_request_check": lambda: fs_checks.problem(fs_message, fs_bytes),
        "fs_reply_decode": lambda: fsr.GetOnlineFeaturesResponse.FromString(reply_bytes),
        "missing": lambda: Predictor._missing(None, call, vectors, slots, names),  # type: ignore[arg-type]
        "model_inputs": lambda: model.rows_from_reply(names, vectors, 0),
        "preprocess": lambda: model.feeds(raw),
        "runtime": lambda: runtime.run(feeds),
        "scores_out": lambda: np.asarray(runtime.run(feeds)[0], np.float64).reshape(n, -1).tolist(),
        "response_encode": lambda: _response(result, "").SerializeToString(),
        "least_response_encode": least_response,
    }
    out = {name: round(_median_us(fn, repeat), 1) for name, fn in timed.items()}
    out["scores_out"] = round(max(0.0, out["scores_out"] - out["runtime"]), 1)
    floor = ("request_decode", "fs_request_encode", "fs_reply_decode", "least_response_encode")
    out["floor"] = round(sum(out[k] for k in floor), 1)
    out["total"] = round(
        sum(v for k, v in out.items() if k not in ("floor", "least_response_encode")), 1
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--families", nargs="+", default=["mlp", "ft_transformer"])
    args = parser.parse_args()
    report = {}
    for family in args.families:
        for n in args.rows:
            us = stages(family, n, args.repeat)
            report[f"{family}/{n}"] = {
                "us_per_request": us,
                "us_per_row": {k: round(v / n, 2) for k, v in us.items()},
                "rows_per_s_cpu_bound": round(n / us["total"] * 1e6),
            }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
