"""The feature-store part of `lathe demo`: define, ingest, materialize, serve, build sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from lathe.feature_store.v1 import message_pb2 as fm
from libs.cli.demo_data import load_lending_club
from libs.sdk.feature_store import FeatureStoreClient, LabelTable, Scalar
from libs.sdk.features import load_repository

DEFINITIONS = Path(__file__).with_name("demo_features.py")
ACTOR = [("lathe-actor", "alice")]
_LOANS = ["LC00001", "LC00002", "LC09999"]
_OUTCOMES = LabelTable(
    "public.lending_club_outcomes",
    entity_column="loan_id",
    event_time_column="scored_at",
    columns=["defaulted"],
)


@dataclass(frozen=True)
class TrainingSet:
    feature_service: str
    snapshot_id: str
    features: tuple[str, ...]
    table: pa.Table


async def define_and_ingest(
    features: FeatureStoreClient, database_url: str, console: Console
) -> None:
    loans = await load_lending_club(database_url)
    console.print(f"{loans} Lending Club loans in public.lending_club_loans (the batch source)")
    for change in await features.apply(load_repository(DEFINITIONS)):
        action = fm.ChangeAction.Name(change.action).removeprefix("CHANGE_ACTION_").lower()
        console.print(f"  {change.kind} {change.name}: {action}")
    progress = await features.materialize("loan_application")
    console.print(
        f"materialized loan_application: {progress.rows_read} new source rows, "
        f"{progress.rows_written} written, {progress.rows_quarantined} quarantined"
    )
    rows = await features.get_online_features({"loan_id": _LOANS}, "underwriting_full")
    names = list(rows[0])
    shown = [*names[:4], names[-1]]  # four stored features and the on-demand loan_to_income
    table = Table("loan", *(name.split(":")[1] for name in shown), "status")
    for key, row in zip(_LOANS, rows, strict=True):
        table.add_row(key, *(_text(row[name].value) for name in shown), row[names[0]].status)
    console.print("GetOnlineFeatures(underwriting_full):")
    console.print(table)


async def training_set(features: FeatureStoreClient, service: str, console: Console) -> TrainingSet:
    training = await features.get_historical_features(_OUTCOMES, service)
    assert training.table is not None
    console.print(
        f"training set for {service}: {training.table.num_rows} rows x "
        f"{len(training.feature_names)} features, point in time at each loan's scoring time; "
        f"snapshot {training.snapshot_id[:23]}…"
    )
    return TrainingSet(service, training.snapshot_id, training.feature_names, training.table)


def _text(value: Scalar) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)
