"""`lathe demo` at reduced size, as a user runs it, and the examples against what it left up.

One run of the real thing (the four services as processes, the suite's Postgres and
NATS in a database and namespace of this test's own): 600 loans, one epoch per model,
2,000 decisions of the credit-line policy. Then what the demo claims is checked from the
outside: every training row's features were known before its label time; online and
offline scores are equal; one prediction's trace spans at least three processes and a
NATS hop; each training job registered exactly one version; the policy's decisions were
logged with their propensities, their rewards joined once, the learned policy registered
with its estimates, gated, served, and truly better than the logging policy. The
examples run against the same platform with nothing of Lathe on their path but the
generated protos.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio

from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import ServiceName
from libs.sdk.trainer import load_spec
from libs.telemetry.span_files import read_span_files
from tests.conftest import free_port
from tests.support.infra import InfraEndpoints
from tests.support.subprocesses import REPO_ROOT

pytestmark = pytest.mark.slow
EXAMPLES = REPO_ROOT / "examples"


def _run(env: dict[str, str], *argv: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest_asyncio.fixture(loop_scope="session")
async def platform_env(tmp_path: Path, infra: InfraEndpoints) -> AsyncIterator[dict[str, str]]:
    """The environment of a `lathe` run on this test's database, namespace and ports."""
    database = f"lathe_test_{uuid.uuid4().hex[:10]}_demo"
    admin = await asyncpg.connect(infra.admin_database_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATHE_", "OTEL_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen" / "python")]),
        LATHE_HOME=str(tmp_path / "home"),
        LATHE_DATABASE_URL=infra.admin_database_url.rsplit("/", 1)[0] + f"/{database}",
        LATHE_NATS_URL=infra.nats_url,
        LATHE_NAMESPACE=f"{infra.namespace}demo",
        **{f"LATHE_{name.value.upper()}_ADDR": f"127.0.0.1:{free_port()}" for name in ServiceName},
    )
    try:
        yield env
    finally:
        await asyncio.to_thread(_run, env, sys.executable, "-m", "libs.cli", "down", timeout=120)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def test_the_demo_at_reduced_size(platform_env: dict[str, str], tmp_path: Path) -> None:
    env = platform_env
    report_path = tmp_path / "report.json"
    demo = await asyncio.to_thread(
        _run,
        env,
        sys.executable,
        "-m",
        "libs.cli",
        "demo",
        "--loans=600",
        "--epochs=1",
        "--latency-calls=20",
        "--decisions=2000",
        f"--report={report_path}",
    )
    assert demo.returncode == 0, demo.stdout[-6000:] + demo.stderr[-3000:]
    assert "Summary" in demo.stdout
    report = json.loads(report_path.read_text())

    # Online and offline scores of the held-out slice are the same numbers.
    held_out = report["held_out"]
    assert held_out["rows"] == 120
    assert held_out["max_abs_score_difference"] < 1e-6
    assert held_out["online_auc"] == pytest.approx(held_out["offline_auc"], abs=1e-9)

    # Exactly one version registered per job, each naming its job in its lineage.
    jobs = {job["job_id"]: job for job in report["jobs"]}
    async with grpc.aio.insecure_channel(env["LATHE_MODEL_REGISTRY_ADDR"]) as channel:
        versions = (
            await ModelRegistryStub(channel).ListModelVersions(
                reg_rr.ListModelVersionsRequest(model_name=report["model"], page_size=100)
            )
        ).model_versions
    per_job = Counter(v.lineage.training_job_id for v in versions)
    assert per_job == Counter({job_id: 1 for job_id in jobs})
    assert {v.version for v in versions} == {job["version"] for job in jobs.values()}

    # The trace of one prediction: at least three processes, and the NATS hop.
    trace = report["trace"]
    spans = [
        s
        for s in read_span_files(Path(env["LATHE_HOME"]) / "traces")
        if s.trace_id == trace["trace_id"]
    ]
    services = {s.service for s in spans}
    assert {"lathe-demo", "inference", "feature-store"} <= services, services
    producer = [s for s in spans if s.kind == "PRODUCER" and "prediction.logged" in s.name]
    consumer = [s for s in spans if s.kind == "CONSUMER" and "prediction.logged" in s.name]
    assert len(producer) == 1 and len(consumer) == 1, [(s.service, s.kind, s.name) for s in spans]
    assert producer[0].service == "inference" and consumer[0].parent_span_id == producer[0].span_id

    await _features_were_known_before_each_label(env, report)
    await _the_policy_loop_held(env, report["decisioning"])
    await asyncio.to_thread(_examples_run_against_the_platform, env, report["model"])


async def _features_were_known_before_each_label(env: dict[str, str], report: dict) -> None:
    """The training set, as the feature store builds it for the trainer, holds only what
    was known at each row's label time: origination rows known (materialized from a row
    whose known-at time is) before it, and repayment counts equal to the events that had
    *arrived* by then."""
    from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
    from libs.cli.demo.training_set import REVIEWS
    from libs.sdk.feature_store import FeatureStoreClient

    conn = await asyncpg.connect(env["LATHE_DATABASE_URL"])
    try:
        reviews = {
            r["loan_id"]: r
            for r in await conn.fetch(
                """SELECT r.loan_id, r.reviewed_at, a.ingested_at
                   FROM public.lending_club_reviews r
                   JOIN public.lending_club_applications a USING (loan_id)"""
            )
        }
        arrivals = await conn.fetch(
            """SELECT p.loan_id, p.paid_at, e.arrival_time
               FROM feature_store.stream_events e
               JOIN public.lending_club_payments p USING (event_id)
               WHERE e.source = 'payments'"""
        )
    finally:
        await conn.close()
    assert len(reviews) == report["loans"] == 600
    assert all(r["ingested_at"] < r["reviewed_at"] for r in reviews.values())
    known: Counter[str] = Counter()
    for a in arrivals:
        review = reviews.get(a["loan_id"])
        if review is None or a["arrival_time"] > review["reviewed_at"]:
            continue
        if _day(a["paid_at"]) >= _day(review["reviewed_at"]) - timedelta(days=89):
            known[a["loan_id"]] += 1  # inside the 90-day window (whole one-day tiles)
    async with grpc.aio.insecure_channel(env["LATHE_FEATURE_STORE_ADDR"]) as channel:
        training = await FeatureStoreClient(FeatureStoreStub(channel)).get_historical_features(
            REVIEWS, "underwriting"
        )
    frame = training.dataframe
    assert len(frame) == 600
    assert frame["loan_origination:interest_rate"].notna().all()
    for loan, count in zip(frame["loan_id"], frame["repayments:payments_90d"], strict=True):
        assert count == known[loan], loan
    assert report["training_set"]["snapshot_id"] == training.snapshot_id


async def _the_policy_loop_held(env: dict[str, str], d: dict) -> None:
    """Decisions logged with propensities; rewards joined once (duplicates refused); the
    learned version registered with its estimates against the logging version; the gate
    refused the worse one and production is the learned one, served; its true value
    beats the logging policy's."""
    from lathe.inference.v1 import message_pb2 as im
    from lathe.inference.v1 import request_response_pb2 as irr
    from lathe.inference.v1.service_pb2_grpc import InferenceStub

    name, decisions = d["model"], 2000
    assert d["decisions"] == d["logged"] == d["logged_with_propensity"] == decisions
    async with grpc.aio.insecure_channel(env["LATHE_INFERENCE_ADDR"]) as channel:
        inference = InferenceStub(channel)
        request = irr.ListDecisionsRequest(
            model_name=name,
            reward_definition="expected_margin",
            reward_definition_version=1,
            page_size=500,
        )
        listed = []
        while True:
            page = await inference.ListDecisions(request)
            listed.extend(page.decisions)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        deployment = (
            await inference.GetDeployment(
                irr.GetDeploymentRequest(model_name=name, alias="production")
            )
        ).deployment
    made = [x for x in listed if x.decision.decision_id.startswith("decide-")]
    assert len(made) == decisions
    for x in made:
        logged = x.decision
        probabilities = dict(zip(logged.action_names, logged.action_probabilities, strict=True))
        assert 0 < logged.propensity <= 1
        assert probabilities[logged.chosen_action] == pytest.approx(logged.propensity)
        assert sum(probabilities.values()) == pytest.approx(1.0)
        assert logged.model_version == d["logging_version"]
        assert x.reward_status == im.REWARD_STATUS_JOINED
    assert deployment.serving_version == d["learned_version"]

    conn = await asyncpg.connect(env["LATHE_DATABASE_URL"])
    try:
        joined, distinct = await conn.fetchrow(
            """SELECT count(*), count(DISTINCT decision_id) FROM inference.rewards
               WHERE model_name = $1""",
            name,
        )
        duplicates = await conn.fetchval(
            """SELECT count(*) FROM inference.reward_refusals f
               WHERE f.reason = 'duplicate' AND EXISTS (
                   SELECT 1 FROM inference.decisions d
                   WHERE d.decision_id = f.decision_id AND d.model_name = $1)""",
            name,
        )
    finally:
        await conn.close()
    assert joined == distinct == decisions
    assert duplicates == d["duplicates_published"] == d["duplicates_refused"] > 0
    assert d["first_reward_stands"]

    async with grpc.aio.insecure_channel(env["LATHE_MODEL_REGISTRY_ADDR"]) as channel:
        registry = ModelRegistryStub(channel)
        learned = (
            await registry.GetModelVersion(
                reg_rr.GetModelVersionRequest(model_name=name, version=d["learned_version"])
            )
        ).model_version
        production = await registry.ResolveAlias(
            reg_rr.ResolveAliasRequest(model_name=name, alias="production")
        )
    for metric in ("ope.dr.value", "ope.dr.lower", "ope.dr.upper", "ope.dr_gain.lower"):
        assert metric in learned.metrics, metric
    assert learned.metrics["ope.dr.value"] == pytest.approx(d["estimates"]["dr"]["value"])
    assert learned.metrics["opl.logging_version"] == d["logging_version"]
    assert {"model.onnx", "policy.json", "preprocessing.json"} <= {
        a.name for a in learned.artifacts
    }
    assert d["gate"]["worse"].startswith("FAILED_PRECONDITION") and "margin" in d["gate"]["worse"]
    assert d["gate"]["learned"] == "OK"
    assert production.alias.version == d["learned_version"]
    assert d["true_value"]["learned"] > d["true_value"]["logging"]


def _day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _examples_run_against_the_platform(env: dict[str, str], model: str) -> None:
    protos_only = {**env, "PYTHONPATH": str(REPO_ROOT / "gen" / "python")}
    predicted = _run(
        protos_only,
        sys.executable,
        str(EXAMPLES / "predict_client.py"),
        "LC00001",
        "--address",
        env["LATHE_INFERENCE_ADDR"],
        timeout=60,
    )
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    assert "LC00001: p(bad) " in predicted.stdout and "trace " in predicted.stdout
    # The credit-default predictor, not the credit-line policy the demo promoted after it.
    assert f"model {model}\n" in predicted.stdout, predicted.stdout

    subscribed = _run(
        protos_only,
        sys.executable,
        str(EXAMPLES / "subscriber.py"),
        "--nats-url",
        env["LATHE_NATS_URL"],
        "--namespace",
        env["LATHE_NAMESPACE"],
        "--from-start",
        "--idle-exit",
        "2",
        timeout=60,
    )
    assert subscribed.returncode == 0, subscribed.stdout + subscribed.stderr
    assert f"promotion: {model} production -> v" in subscribed.stdout
    assert f"promotion: {model} canary -> v" in subscribed.stdout
    assert f"prediction: {model} v" in subscribed.stdout

    plan = _run(
        env,
        sys.executable,
        "-m",
        "libs.cli",
        "features",
        "plan",
        str(EXAMPLES / "feature_repo" / "underwriting.py"),
        timeout=60,
    )
    assert plan.returncode == 0, plan.stdout + plan.stderr


@pytest.mark.parametrize("name", ["underwriting_ft_transformer.yaml", "underwriting_mlp.yaml"])
def test_the_example_job_specs_parse(name: str) -> None:
    spec = load_spec(EXAMPLES / "jobs" / name)
    assert spec.feature_service == "underwriting"
    assert "lending_club_reviews" in spec.label_source.query
    assert spec.split.HasField("validation_start")


def test_the_sequence_job_spec_reads_the_repositorys_last_n_sequence() -> None:
    from libs.sdk.features import load_repository

    spec = load_spec(EXAMPLES / "jobs" / "underwriting_sequence_transformer.yaml")
    assert spec.model.family == "sequence_transformer"
    repository = load_repository(EXAMPLES / "feature_repo" / "underwriting.py")
    services = {s.name: s for s in repository.feature_services}
    served = services[spec.feature_service].features
    (sequence,) = spec.model.sequences
    assert all(feature in served for feature in sequence.features)
    assert "repayments:last_payments__event_time" in served  # read as ages, not named
    assert not any("last_payments" in f for f in services["underwriting"].features)


def test_the_traced_decision_is_logged_at_any_sample_rate_down_to_a_tenth_of_a_percent() -> None:
    from libs.cli.demo.tracing import logged_decision_id
    from services.inference.domain.routing import sampled

    for _ in range(20):
        decision_id = logged_decision_id()
        assert all(sampled(decision_id, rate) for rate in (0.001, 0.01, 1.0))
