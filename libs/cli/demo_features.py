"""Feature definitions of the demo: Lending Club loans, as an ML engineer would write them.

Applied by `lathe demo` (and by hand: `lathe features apply libs/cli/demo_features.py`).
The batch source is the table `public.lending_club_loans` that the demo loads.
"""

from libs.sdk.features import (
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    Int64,
    NotNull,
    Range,
    on_demand_feature_view,
)

loan = Entity("loan", join_key="loan_id", description="A Lending Club loan application")

loan_application = FeatureView(
    "loan_application",
    entity=loan,
    source=BatchSource(
        "public.lending_club_loans",
        event_time_column="issued_at",
        created_time_column="ingested_at",
    ),
    # Origination facts do not go stale; a view of balances would set a TTL here.
    ttl=None,
    features=[
        Field("interest_rate", Float64, [NotNull(), Range(0, 40)]),
        Field("term", Int64),
        Field("loan_amount", Float64, [Range(0, 100_000)]),
        Field("annual_income", Float64, [Range(0, 10_000_000)]),
        Field("debt_to_income", Float64),
        Field("inquiries_last_12m", Int64),
        Field("accounts_opened_24m", Int64),
        Field("total_credit_utilized", Float64),
    ],
    owner="underwriting-ml",
    description="What the applicant and the loan looked like at origination",
)


@on_demand_feature_view(
    inputs=["loan_application:loan_amount", "loan_application:annual_income"],
    features=[Field("loan_to_income", Float64)],
)
def affordability(row):  # type: ignore[no-untyped-def]
    income = row["loan_application:annual_income"]
    amount = row["loan_application:loan_amount"]
    if not income or amount is None:
        return {"loan_to_income": None}
    return {"loan_to_income": amount / income}


underwriting_basic = FeatureService(
    "underwriting_basic",
    features=["loan_application:loan_amount", "loan_application:annual_income"],
    owner="underwriting-ml",
)
underwriting_full = FeatureService(
    "underwriting_full",
    features=[
        "loan_application:interest_rate",
        "loan_application:term",
        "loan_application:loan_amount",
        "loan_application:annual_income",
        "loan_application:debt_to_income",
        "loan_application:inquiries_last_12m",
        "loan_application:accounts_opened_24m",
        "loan_application:total_credit_utilized",
        "affordability:loan_to_income",
    ],
    owner="underwriting-ml",
)
