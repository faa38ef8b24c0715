"""The feature-store part of `lathe demo`: define, ingest, materialize, serve, build sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from lathe.feature_store.v1 import message_pb2 as fm
from lathe.feature_store.v1 import request_response_pb2 as frr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.cli.demo_data import load_lending_club
from libs.sdk.features import load_repository

DEFINITIONS = Path(__file__).with_name("demo_features.py")
ACTOR = [("lathe-actor", "alice")]


@dataclass(frozen=True)
class TrainingSet:
    feature_service: str
    snapshot_id: str
    features: tuple[str, ...]
    table: pa.Table


async def define_and_ingest(
    features: FeatureStoreStub, database_url: str, console: Console
) -> None:
    loans = await load_lending_club(database_url)
    console.print(f"{loans} Lending Club loans in public.lending_club_loans (the batch source)")
    repository = load_repository(DEFINITIONS)
    applied = await features.ApplyDefinitions(
        frr.ApplyDefinitionsRequest(repository=repository), metadata=ACTOR
    )
    for change in applied.changes:
        action = fm.ChangeAction.Name(change.action).removeprefix("CHANGE_ACTION_").lower()
        console.print(f"  {change.kind} {change.name}: {action}")
    async for response in features.Materialize(
        frr.MaterializeRequest(feature_view="loan_application"), metadata=ACTOR
    ):
        progress = response.progress
    console.print(
        f"materialized loan_application: {progress.rows_read} new source rows, "
        f"{progress.rows_written} written, {progress.rows_quarantined} quarantined"
    )
    online = await features.GetOnlineFeatures(
        frr.GetOnlineFeaturesRequest(
            feature_service="underwriting_full",
            entities={
                "loan_id": fm.RepeatedValue(
                    values=[fm.Value(string_value=k) for k in ("LC00001", "LC00002", "LC09999")]
                )
            },
        )
    )
    table = Table(
        "loan", *(n.split(":")[1] for n in online.feature_names[:4]), "loan_to_income", "status"
    )
    for key, row in zip(("LC00001", "LC00002", "LC09999"), online.results, strict=True):
        values = [_text(v) for v in row.values]
        status = fm.FeatureStatus.Name(row.statuses[0]).removeprefix("FEATURE_STATUS_").lower()
        table.add_row(key, *values[:4], values[-1], status)
    console.print("GetOnlineFeatures(underwriting_full):")
    console.print(table)


async def training_set(features: FeatureStoreStub, service: str, console: Console) -> TrainingSet:
    snapshot, parts = None, []
    async for response in features.GetHistoricalFeatures(
        frr.GetHistoricalFeaturesRequest(
            feature_service=service,
            label_source=frr.LabelSource(
                table="public.lending_club_outcomes",
                entity_column="loan_id",
                event_time_column="scored_at",
                columns=["defaulted"],
            ),
        ),
        metadata=ACTOR,
    ):
        if response.HasField("snapshot"):
            snapshot = response.snapshot
        else:
            parts.append(response.arrow_ipc)
    assert snapshot is not None
    table = pa.ipc.open_stream(b"".join(parts)).read_all()
    console.print(
        f"training set for {service}: {snapshot.rows} rows x {len(snapshot.feature_names)} "
        "features, point in time at each loan's scoring time; "
        f"snapshot {snapshot.snapshot_id[:23]}…"
    )
    return TrainingSet(service, snapshot.snapshot_id, tuple(snapshot.feature_names), table)


def _text(value: fm.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind is None:
        return "-"
    number = getattr(value, kind)
    return f"{number:.6g}" if isinstance(number, float) else str(number)
