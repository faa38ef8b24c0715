"""Step: one prediction's trace, gathered from every process's span file, as a tree.

The demo's client span, the inference service's Predict, its GetOnlineFeatures call into
the feature store and the SQL there, then the event hops: the prediction log published
by the inference service's outbox relay to JetStream, and the downstream subscriber's
consumption of it — one trace id across four processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

from opentelemetry import trace

from libs.cli.demo.context import DemoRun, Step
from libs.sdk.inference import PredictRow
from libs.telemetry.span_files import SpanRecord, read_span_files
from libs.telemetry.trace_tree import build_trace_tree

_PATIENCE_S = 15.0


async def trace_one_prediction(run: DemoRun) -> None:
    assert run.downstream is not None
    loan = run.validation_loans[0]
    decision_id = logged_decision_id()
    with trace.get_tracer("lathe.demo").start_as_current_span("demo: score one loan") as root:
        trace_id = f"{root.get_span_context().trace_id:032x}"
        result = await run.c.inference.predict(
            run.model_name, [PredictRow({"loan_id": loan}, decision_id=decision_id)]
        )
    row = result.rows[0]
    run.console.print(
        f"Predict({loan}) -> {next(iter(row.scores.values())):.4f} from v{row.model_version} "
        f"({row.arm}); decision {decision_id}"
    )
    spans: list[SpanRecord] = []
    with run.progress("gather the trace from the span files", None) as bar:
        deadline = time.monotonic() + _PATIENCE_S
        while time.monotonic() < deadline:
            logged = any(
                getattr(r.message, "decision_id", "") == decision_id
                for r in run.downstream.predictions
            )
            provider = trace.get_tracer_provider()
            if hasattr(provider, "force_flush"):
                provider.force_flush()
            spans = [
                s for s in read_span_files(run.settings.home / "traces") if s.trace_id == trace_id
            ]
            kinds = {s.kind for s in spans}
            bar.update(detail=f"{len(spans)} spans, prediction log received: {logged}")
            if logged and {"PRODUCER", "CONSUMER"} <= kinds and len(_services(spans)) >= 3:
                break
            await asyncio.sleep(0.5)
    tree = build_trace_tree(trace_id, spans)
    if tree is None:
        run.console.print(
            "no spans found under $LATHE_HOME/traces (with OTEL_EXPORTER_OTLP_ENDPOINT set they "
            "go to the collector)"
        )
    else:
        run.console.print(tree)
    services = _services(spans)
    hops = [s.name for s in spans if s.kind in ("PRODUCER", "CONSUMER")]
    run.console.print(
        f"{len(spans)} spans of {len(services)} processes ({', '.join(services)}); event hops: "
        + (", ".join(hops) or "none")
        + f"\n(again any time: lathe trace {trace_id})"
    )
    promotion = run.report.get("promotion_trace_id")
    if promotion:
        await _show_promotion(run, promotion)
    run.report["trace"] = {
        "trace_id": trace_id,
        "decision_id": decision_id,
        "spans": len(spans),
        "services": services,
        "event_hops": hops,
    }


async def _show_promotion(run: DemoRun, trace_id: str) -> None:
    """The promotion's trace: registry -> its event -> the inference service's follower."""
    spans = [s for s in read_span_files(run.settings.home / "traces") if s.trace_id == trace_id]
    shown = [s for s in spans if s.kind != "CLIENT" or "/" in s.name]  # SQL spans left out
    tree = build_trace_tree(trace_id, shown)
    if tree is None:
        return
    run.console.print("and the promotion that put the model there (SQL spans left out):")
    run.console.print(tree)
    run.console.print(f"(lathe trace {trace_id})")


def logged_decision_id(rate: float = 0.001) -> str:
    """A fresh decision id that the inference service logs at any sample rate >= ``rate``:
    it samples by a hash of the id (ADR 0018: blake2b of ``"log\x1e" + id``, 64 bits, below
    the rate), so the trace has its event hop even on a platform logging 1%."""
    while True:
        decision_id = str(uuid.uuid4())
        digest = hashlib.blake2b(f"log\x1e{decision_id}".encode(), digest_size=8).digest()
        if int.from_bytes(digest, "big") / 2**64 < rate:
            return decision_id


def _services(spans: list[SpanRecord]) -> list[str]:
    return sorted({s.service for s in spans})


STEP = Step("One prediction's trace, end to end", trace_one_prediction)
