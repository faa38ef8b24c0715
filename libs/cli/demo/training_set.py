"""Step: labels and a point-in-time training set.

Every loan is reviewed once the repayment feed is in: the review time is the label's
time, so each training row sees exactly what was known then (origination facts known an
hour after issue, repayment aggregates of events that had arrived, the on-demand
feature computed from those). Reviews follow the order of issue, so the last fifth by
review time (the most recently issued loans) is the held-out validation slice.
"""

from __future__ import annotations

import asyncpg
import pandas as pd
from rich.table import Table

from libs.cli.demo.context import FEATURE_SERVICE, DemoRun, Step
from libs.cli.demo.data import record_reviews
from libs.sdk.feature_store import LabelTable

VALIDATION_SHARE = 0.2
REVIEWS = LabelTable(
    "public.lending_club_reviews",
    entity_column="loan_id",
    event_time_column="reviewed_at",
    columns=["defaulted"],
)


async def build_training_set(run: DemoRun) -> None:
    assert run.state is not None and run.labels_after is not None
    conn = await asyncpg.connect(run.state.database_url)
    try:
        reviews = await record_reviews(conn, run.loans, run.labels_after)
    finally:
        await conn.close()
    run.labels = {r.loan_id: r.defaulted for r in reviews}
    cut = int(len(reviews) * (1 - VALIDATION_SHARE))
    run.validation_start = reviews[cut].reviewed_at
    run.validation_loans = [r.loan_id for r in reviews[cut:]]
    bad = sum(run.labels.values())
    run.console.print(
        f"{len(reviews):,} reviews in public.lending_club_reviews ({bad} went bad: late, in "
        f"grace or charged off); validation from {run.validation_start:%H:%M:%S.%f} on "
        f"({len(run.validation_loans):,} most recently issued loans)"
    )
    with run.progress(f"GetHistoricalFeatures({FEATURE_SERVICE}), point in time", None) as bar:
        training = await run.c.features.get_historical_features(REVIEWS, FEATURE_SERVICE)
        bar.update(detail=f"{len(training.dataframe):,} rows")
    frame = training.dataframe
    run.console.print(
        f"training set: {len(frame):,} rows x {len(training.feature_names)} features, "
        f"snapshot {training.snapshot_id[:23]}…"
    )
    run.console.print(_preview(frame, training.feature_names))
    run.report["training_set"] = {
        "rows": len(frame),
        "features": list(training.feature_names),
        "snapshot_id": training.snapshot_id,
        "validation_start": run.validation_start.isoformat(),
    }


def _preview(frame: pd.DataFrame, names: tuple[str, ...]) -> Table:
    shown = [
        n
        for n in names
        if n.split(":")[1] in {"grade", "payments_90d", "days_late_max_90d", "payment_to_income"}
    ]
    table = Table(
        "loan", "reviewed at (label time)", "defaulted", *(n.split(":")[1] for n in shown)
    )
    for _, row in frame.head(3).iterrows():
        table.add_row(
            str(row["loan_id"]),
            f"{row['event_time']:%H:%M:%S.%f}",
            str(row["defaulted"]),
            *(_text(row[n]) for n in shown),
        )
    return table


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


STEP = Step("A point-in-time training set", build_training_set)
