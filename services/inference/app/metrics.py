"""What on-call engineers watch of an inference process, read when metrics are collected.

Observable instruments only: nothing is counted on Predict's path. Each collection reads
the serving table and the counters the batcher, the feature client and the prediction
logger keep anyway. Exported to Prometheus as (``{model, alias}`` for deployments):

- ``lathe_inference_deployment_serving_version`` / ``_requested_version``: what serves
  and what the registry's alias asks for (0: nothing);
- ``lathe_inference_deployment_refused``: 1 while the version the alias asks for was
  refused (download, verify, build, warm-up or parity) and the previous one serves;
- ``lathe_inference_deployment_warm``: 1 once a version serves (health follows it);
- ``lathe_inference_batches_total``, ``lathe_inference_rows_scored_total``: the
  batcher's work (rows / batches is the mean batch size);
- ``lathe_inference_requests_expired_total`` (deadline passed before scoring),
  ``lathe_inference_requests_rejected_total`` (RESOURCE_EXHAUSTED: queue full),
  ``lathe_inference_shadow_requests_dropped_total`` (shadow rows past their own bound:
  the shadow falls behind serving traffic and logs fewer decisions),
  ``lathe_inference_queued_rows``;
- ``lathe_inference_prediction_logs_written_total`` / ``_dropped_total`` (buffer full:
  training and off-policy data lost) and ``lathe_inference_prediction_logs_pending``;
- ``lathe_inference_feature_calls_total`` and ``lathe_inference_shared_feature_calls_total``
  (calls that carried several requests' rows).

The alerts on them are in ``infra/prometheus/alerts.yml`` (``LatheInference*``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from services.inference.app.prediction_log import PredictionLogger
from services.inference.app.serving import ServingTable, Slot
from services.inference.batching import Batcher
from services.inference.store.features import OnlineFeatures


@dataclass(frozen=True, eq=False)
class InferenceInstance:
    """What one inference service instance reports."""

    table: ServingTable
    batcher: Batcher
    logger: PredictionLogger
    features: OnlineFeatures


_watched: set[InferenceInstance] = set()
"""The instances of this process (one, except when tests host several)."""


def watch(instance: InferenceInstance) -> Callable[[], None]:
    """Report ``instance`` from now on; returns what stops it (call at shutdown)."""
    _watched.add(instance)
    return lambda: _watched.discard(instance)


def _slots() -> Iterable[Slot]:
    for instance in list(_watched):
        for slot in instance.table.slots():
            if not slot.removed:
                yield slot


def _labels(slot: Slot) -> dict[str, str]:
    return {"model": slot.model_name, "alias": slot.alias}


def serving_versions(_: CallbackOptions) -> Iterable[Observation]:
    for slot in _slots():
        yield Observation(slot.current.version if slot.current else 0, _labels(slot))


def requested_versions(_: CallbackOptions) -> Iterable[Observation]:
    for slot in _slots():
        yield Observation(slot.requested_version, _labels(slot))


def refused(_: CallbackOptions) -> Iterable[Observation]:
    for slot in _slots():
        yield Observation(1 if slot.refused else 0, _labels(slot))


def warm(_: CallbackOptions) -> Iterable[Observation]:
    for slot in _slots():
        yield Observation(1 if slot.warm else 0, _labels(slot))


def _total(
    read: Callable[[InferenceInstance], int],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_: CallbackOptions) -> Iterable[Observation]:
        if _watched:
            yield Observation(sum(read(instance) for instance in list(_watched)))

    return observe


batches = _total(lambda p: p.batcher.stats.batches)
rows_scored = _total(lambda p: p.batcher.stats.rows)
requests_expired = _total(lambda p: p.batcher.stats.dropped_expired)
requests_rejected = _total(lambda p: p.batcher.stats.rejected_full)
shadow_requests_dropped = _total(lambda p: p.batcher.stats.shadow_dropped)
queued_rows = _total(lambda p: p.batcher.queued_rows)
logs_written = _total(lambda p: p.logger.written)
logs_dropped = _total(lambda p: p.logger.dropped)
logs_pending = _total(lambda p: p.logger.pending)
feature_calls = _total(lambda p: p.features.stats.calls)
shared_feature_calls = _total(lambda p: p.features.stats.shared_calls)


@dataclass(frozen=True)
class Instrument:
    name: str
    callback: Callable[[CallbackOptions], Iterable[Observation]]
    unit: str
    description: str
    counter: bool = False
    """Monotonic (exported as ``<name>_total``); else a gauge."""


INSTRUMENTS = (
    Instrument(
        "lathe.inference.deployment.serving_version",
        serving_versions,
        "{version}",
        "Version serving (0: none)",
    ),
    Instrument(
        "lathe.inference.deployment.requested_version",
        requested_versions,
        "{version}",
        "Version the registry's alias asks for",
    ),
    Instrument(
        "lathe.inference.deployment.refused",
        refused,
        "1",
        "1 while the requested version is refused and the previous one serves",
    ),
    Instrument("lathe.inference.deployment.warm", warm, "1", "1 once a version serves"),
    Instrument("lathe.inference.queued_rows", queued_rows, "{row}", "Rows waiting to be scored"),
    Instrument(
        "lathe.inference.prediction_logs_pending",
        logs_pending,
        "{log}",
        "Prediction logs waiting to be written",
    ),
    Instrument("lathe.inference.batches", batches, "{batch}", "Batches scored", counter=True),
    Instrument("lathe.inference.rows_scored", rows_scored, "{row}", "Rows scored", counter=True),
    Instrument(
        "lathe.inference.requests_expired",
        requests_expired,
        "{request}",
        "Requests whose deadline passed before their rows were scored",
        counter=True,
    ),
    Instrument(
        "lathe.inference.requests_rejected",
        requests_rejected,
        "{request}",
        "Requests answered RESOURCE_EXHAUSTED (queue full)",
        counter=True,
    ),
    Instrument(
        "lathe.inference.shadow_requests_dropped",
        shadow_requests_dropped,
        "{request}",
        "Shadow scorings dropped: too many shadow rows waited behind serving traffic",
        counter=True,
    ),
    Instrument(
        "lathe.inference.prediction_logs_written",
        logs_written,
        "{log}",
        "Prediction logs written",
        counter=True,
    ),
    Instrument(
        "lathe.inference.prediction_logs_dropped",
        logs_dropped,
        "{log}",
        "Prediction logs dropped (buffer full): training and off-policy data lost",
        counter=True,
    ),
    Instrument(
        "lathe.inference.feature_calls",
        feature_calls,
        "{call}",
        "GetOnlineFeatures calls",
        counter=True,
    ),
    Instrument(
        "lathe.inference.shared_feature_calls",
        shared_feature_calls,
        "{call}",
        "GetOnlineFeatures calls carrying several requests' rows",
        counter=True,
    ),
)

_meter = metrics.get_meter(__name__)
for _instrument in INSTRUMENTS:
    create = (
        _meter.create_observable_counter if _instrument.counter else _meter.create_observable_gauge
    )
    create(
        _instrument.name,
        callbacks=[_instrument.callback],
        unit=_instrument.unit,
        description=_instrument.description,
    )
