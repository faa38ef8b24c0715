"""Step: the held-out slice scored through gRPC Predict, next to the same rows scored
offline (the registered ONNX model on the point-in-time features): the same scores, the
same AUC; then Predict's latency, one row per call.
"""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg
import numpy as np
import onnxruntime
import pandas as pd
from rich.table import Table

from libs.cli.demo.context import FEATURE_SERVICE, DemoRun, Step
from libs.cli.demo.metrics import auc, percentiles_ms
from libs.preprocessing import PreprocessingSpec, transform
from libs.sdk.inference import PredictRow
from libs.sdk.model_registry import RegistryClient

ROWS_PER_CALL = 100
_LOG_PATIENCE_S = 15.0
_LOG_QUIET_S = 2.0


async def score_held_out(run: DemoRun) -> None:
    champion = run.trained["champion"]
    loans = run.validation_loans
    online = await predict_all(run, loans, "score the held-out slice through Predict")
    offline = await score_offline(run, loans, champion.version)
    labels = [run.labels[loan] for loan in loans]
    online_scores = [online[loan][0] for loan in loans]
    versions = {online[loan][1] for loan in loans}
    online_auc, offline_auc = auc(labels, online_scores), auc(labels, offline)
    difference = float(np.max(np.abs(np.asarray(online_scores) - np.asarray(offline))))
    table = Table("held-out loans", "scored", "AUC", "model")
    table.add_row(
        f"{len(loans):,}",
        "offline: ONNX on GetHistoricalFeatures",
        f"{offline_auc:.4f}",
        f"v{champion.version}",
    )
    table.add_row(
        f"{len(loans):,}",
        "online: gRPC Predict",
        f"{online_auc:.4f}",
        ", ".join(f"v{v}" for v in sorted(versions)),
    )
    run.console.print(table)
    verdict = "equal" if difference < 1e-6 else "[red]DIFFERENT[/red]"
    run.console.print(
        f"online vs offline: {verdict} (largest score difference {difference:.1e}; the trainer's "
        f"validation auc was {champion.metrics.get('auc', float('nan')):.4f}, LightGBM's "
        f"{champion.baseline_metrics.get('auc', float('nan')):.4f})"
    )

    received = await _logs_received(run, len(loans))
    run.console.print(
        f"the downstream subscriber received {received:,} prediction logs for the "
        f"{len(loans):,} rows (lathe.inference.prediction.logged: features, their event "
        "times, scores; a platform the demo starts logs every prediction, "
        "LATHE_INFERENCE_LOG_SAMPLE_RATE)"
    )
    latencies = await measure_latency(run, loans)
    p = percentiles_ms(latencies)
    load = os.getloadavg()[0]
    run.console.print(
        f"Predict, 1 row per call, {len(latencies)} calls: "
        + "  ".join(f"{k} {v:.2f} ms" for k, v in p.items())
        + f" (machine load average {load:.1f} on {os.cpu_count()} cores)"
    )
    run.report["held_out"] = {
        "rows": len(loans),
        "online_auc": online_auc,
        "offline_auc": offline_auc,
        "max_abs_score_difference": difference,
    }
    run.report["predict_latency_ms"] = p
    run.report["load_average"] = round(load, 1)


async def _logs_received(run: DemoRun, rows: int) -> int:
    """Wait (briefly) until the downstream subscriber has the logs of ``rows`` predictions
    (or they stop coming: a platform may log a sample), so their relaying does not share
    the machine with the latency measurement."""
    assert run.downstream is not None
    deadline = time.monotonic() + _LOG_PATIENCE_S
    last, quiet_since = -1, time.monotonic()
    while True:
        received = len(run.downstream.predictions)
        if received != last:
            last, quiet_since = received, time.monotonic()
        now = time.monotonic()
        if received >= rows or now > deadline or now - quiet_since > _LOG_QUIET_S:
            return received
        await asyncio.sleep(0.1)


async def predict_all(
    run: DemoRun, loans: list[str], description: str
) -> dict[str, tuple[float, int, str]]:
    """Loan -> (score, model version, arm), ROWS_PER_CALL rows per Predict call."""
    answers: dict[str, tuple[float, int, str]] = {}
    with run.progress(description, len(loans)) as bar:
        for start in range(0, len(loans), ROWS_PER_CALL):
            chunk = loans[start : start + ROWS_PER_CALL]
            result = await run.c.inference.predict(
                run.model_name, [PredictRow({"loan_id": loan}) for loan in chunk]
            )
            for loan, row in zip(chunk, result.rows, strict=True):
                answers[loan] = (next(iter(row.scores.values())), row.model_version, row.arm)
            bar.advance(len(chunk))
    return answers


async def score_offline(run: DemoRun, loans: list[str], version: int) -> list[float]:
    """The registered model, run here on the feature store's point-in-time features."""
    assert run.state is not None
    registry = RegistryClient(run.c.registry)
    model = (await registry.download(run.model_name, version, "model.onnx")).content
    spec = PreprocessingSpec.from_json(
        (await registry.download(run.model_name, version, "preprocessing.json")).content
    )
    reviews = await _review_times(run, loans)
    training = await run.c.features.get_historical_features(reviews, FEATURE_SERVICE)
    frame = training.dataframe
    columns = {name: frame[name].tolist() for name in spec.feature_names}
    encoded = transform(spec, columns)
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"numeric": encoded.numeric, "categorical": encoded.categorical})
    by_loan = dict(zip(frame["loan_id"], np.asarray(scores).reshape(-1).tolist(), strict=True))
    return [by_loan[loan] for loan in loans]


async def _review_times(run: DemoRun, loans: list[str]) -> pd.DataFrame:
    assert run.state is not None
    conn = await asyncpg.connect(run.state.database_url)
    try:
        rows = await conn.fetch(
            "SELECT loan_id, reviewed_at FROM public.lending_club_reviews "
            "WHERE loan_id = ANY($1::text[])",
            loans,
        )
    finally:
        await conn.close()
    return pd.DataFrame(
        {
            "loan_id": [r["loan_id"] for r in rows],
            "event_time": pd.to_datetime([r["reviewed_at"] for r in rows], utc=True),
        }
    )


async def measure_latency(run: DemoRun, loans: list[str]) -> list[float]:
    latencies = []
    calls = run.options.latency_calls
    with run.progress("Predict latency, one row per call", calls) as bar:
        for i in range(calls):
            row = [PredictRow({"loan_id": loans[i % len(loans)]})]
            started = time.perf_counter()
            await run.c.inference.predict(run.model_name, row)
            latencies.append(time.perf_counter() - started)
            bar.advance()
    return latencies


STEP = Step("Serving: the held-out slice through Predict", score_held_out)
