"""The underwriting team's feature repository: Lending Club loans, as Lathe serves them.

`lathe demo` applies this file; by hand, against `lathe up` once the demo has loaded the
loans (`public.lending_club_applications`):

    .venv/bin/lathe features plan examples/feature_repo/underwriting.py
    .venv/bin/lathe features apply examples/feature_repo/underwriting.py
    .venv/bin/lathe features materialize loan_origination

- ``loan_origination``: a batch view of what the application said at origination.
- ``repayments``: a stream view of the repayment events published as JSON on
  ``lathe.ingest.payments`` (``{"loan_id": ..., "paid_at": ..., "amount": ...,
  "days_late": ..., "shortfall": ...}``), aggregated over 30- and 90-day windows, and the
  last 12 payments as a sequence (``LAST_N``: amount and days late, oldest first, with
  their event times) for a sequence model.
- ``affordability``: an on-demand view computed at read time, online and offline alike.
- ``underwriting``: the feature service the tabular models are trained on and served from.
- ``underwriting_sequences``: the same plus the payment sequence, for the
  ``sequence_transformer`` (tabular models cannot read lists).
"""

from datetime import timedelta

from libs.sdk.features import (
    Aggregation,
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    Int64,
    NotNull,
    Range,
    StreamSource,
    String,
    on_demand_feature_view,
)

loan = Entity("loan", join_key="loan_id", description="A Lending Club loan")

loan_origination = FeatureView(
    "loan_origination",
    entity=loan,
    source=BatchSource(
        "public.lending_club_applications",
        event_time_column="issued_at",
        created_time_column="ingested_at",  # when each row became known
    ),
    ttl=None,  # origination facts do not go stale
    features=[
        Field("interest_rate", Float64, [NotNull(), Range(0, 40)]),
        Field("term", Int64),
        Field("loan_amount", Float64, [Range(0, 100_000)]),
        Field("installment", Float64),
        Field("annual_income", Float64, [Range(0, 10_000_000)]),
        Field("debt_to_income", Float64),
        Field("inquiries_last_12m", Int64),
        Field("accounts_opened_24m", Int64),
        Field("total_credit_utilized", Float64),
        Field("grade", String),
        Field("homeownership", String),
    ],
    owner="underwriting-ml",
    description="What the application and the loan looked like at origination",
)

repayments = FeatureView(
    "repayments",
    entity=loan,
    source=StreamSource("payments", event_time_field="paid_at"),
    tile_size=timedelta(days=1),
    allowed_lateness=timedelta(days=100),  # the servicing ledger replays the last quarter
    aggregations=[
        Aggregation("amount", "count", timedelta(days=90), "payments_90d"),
        Aggregation("amount", "sum", timedelta(days=30), "paid_30d"),
        Aggregation("shortfall", "sum", timedelta(days=90), "shortfall_90d"),
        Aggregation("days_late", "mean", timedelta(days=90), "days_late_mean_90d"),
        Aggregation("days_late", "max", timedelta(days=90), "days_late_max_90d"),
        Aggregation(  # -> last_payments__amount, __days_late, __event_time (lists)
            "",
            "last_n",
            timedelta(days=90),
            "last_payments",
            n=12,
            columns={"amount": Float64, "days_late": Int64},
        ),
    ],
    owner="underwriting-ml",
    description="How the loan has been repaid: windowed aggregates of repayment events",
)


@on_demand_feature_view(
    inputs=["loan_origination:installment", "loan_origination:annual_income"],
    features=[Field("payment_to_income", Float64)],
)
def affordability(row):  # type: ignore[no-untyped-def]
    income = row["loan_origination:annual_income"]
    installment = row["loan_origination:installment"]
    if not income or installment is None:
        return {"payment_to_income": None}
    return {"payment_to_income": 12 * installment / income}


REPAYMENT_SUMMARIES = [
    "repayments:payments_90d",
    "repayments:paid_30d",
    "repayments:shortfall_90d",
    "repayments:days_late_mean_90d",
    "repayments:days_late_max_90d",
]

underwriting = FeatureService(
    "underwriting",
    features=["loan_origination:*", *REPAYMENT_SUMMARIES, "affordability:*"],
    owner="underwriting-ml",
    description="Origination facts, repayment behaviour and affordability",
)

underwriting_sequences = FeatureService(
    "underwriting_sequences",
    features=[
        "loan_origination:*",
        *REPAYMENT_SUMMARIES,
        "repayments:last_payments__amount",
        "repayments:last_payments__days_late",
        "repayments:last_payments__event_time",
        "affordability:*",
    ],
    owner="underwriting-ml",
    description="The underwriting features plus each loan's last 12 payments, oldest first",
)
