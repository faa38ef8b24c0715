"""The benchmark report's pure logic: goals judged, runs merged, Markdown, PNG plots.

Built from a small synthetic results file made with the harness's own dataclasses
(``bench/results.py``), so the report reads exactly what a run writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import main
from bench.families import Family
from bench.goals import Compare, GoalSpec, Status, evaluate
from bench.harness import json_safe, latency_histogram
from bench.report_data import build_report, load_results
from bench.report_markdown import render_markdown
from bench.report_plots import write_plots
from bench.results import (
    Comparison,
    FamilyResult,
    Goal,
    Measurement,
    Report,
    Role,
    Value,
    to_json,
)

PNG_HEADER = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class _Params:
    samples: int = 1000


async def _never_run(context: Any, params: Any) -> FamilyResult:
    raise AssertionError("the report never runs a family")


def _latency(key: str, role: Role, p50: float, p99: float) -> Measurement:
    samples_ms = [p50 + (p99 - p50) * i / 60 for i in range(60)]
    return Measurement(
        key,
        f"{key} label",
        role,
        {
            "p50": Value(p50, "ms"),
            "p90": Value((p50 + p99) / 2, "ms"),
            "p99": Value(p99, "ms"),
        },
        {"latency_histogram": latency_histogram([int(ms * 1e6) for ms in samples_ms])},
    )


def _family_result(*, samples: int = 100, lathe_p99: float = 1.2) -> FamilyResult:
    return FamilyResult(
        name="demo.serving",
        summary="Demo serving vs a raw echo",
        parameters={"samples": samples},
        comparisons=[
            Comparison(
                "online",
                "Online read | 1 entity",
                "p99",
                False,
                ["p50", "p90", "p99"],
                [
                    _latency("raw_echo", Role.BASELINE, 0.5, 0.8),
                    _latency("raw_pk", Role.DIAGNOSTIC, 0.1, 0.2),
                    _latency("lathe_read", Role.LATHE, 0.7, lathe_p99),
                ],
                notes=["interleaved in chunks"],
            ),
            Comparison(
                "throughput",
                "Ingest",
                "events_per_s",
                True,
                ["events_per_s"],
                [
                    Measurement("raw", "raw", Role.BASELINE, {"events_per_s": Value(1000, "e/s")}),
                    Measurement("lathe", "Lathe", Role.LATHE, {"events_per_s": Value(0, "e/s")}),
                ],
            ),
        ],
        goals=[Goal("own check", 1.2, 2.0, "ms", "<=")],
        wall_s=3.5,
        conditions={"machine_cpu_busy_pct": 40.0},
    )


def _results(
    families: list[FamilyResult], *, started_at: str, errors: dict[str, str] | None = None
) -> dict[str, Any]:
    report = Report(
        started_at=started_at,
        finished_at=started_at,
        command=["python", "-m", "bench", "--quick"],
        machine={"cpu_count": 2, "cpu_model": "test CPU", "python": "3.11"},
        infrastructure={"postgres": {"version": "15"}, "nats": {"version": "2.9"}},
        families=families,
        errors=errors or {},
    )
    return json.loads(json.dumps(json_safe(to_json(report))))


GOALS = (
    GoalSpec(
        issue=11,
        description="read p99 vs echo + pk p99",
        figure="online/lathe_read/p99",
        baseline=("online/raw_echo/p99", "online/raw_pk/p99"),
        comparator="<=",
        threshold=1.3,
    ),
    GoalSpec(
        issue=12,
        description="read p99 absolute",
        figure="online/lathe_read/p99",
        compare=Compare.VALUE,
        comparator="<",
        threshold=1.0,
        unit="ms",
    ),
    GoalSpec(
        issue=13,
        description="a sequence read the family does not produce yet",
        figure="online/lathe_sequence/p99",
        baseline=("online/lathe_read/p99",),
    ),
    GoalSpec(
        issue=None,
        description="echo p50 reported",
        figure="online/raw_echo/p50",
        compare=Compare.VALUE,
    ),
)


def _family(goals: tuple[GoalSpec, ...] = GOALS, name: str = "demo.serving") -> Family:
    return Family(name=name, summary="demo", params=_Params, run=_never_run, goals=goals)


def _result_json(**kwargs: Any) -> dict[str, Any]:
    data = _results([_family_result(**kwargs)], started_at="2026-12-07T08:00:00Z")
    return data["families"]["demo.serving"]


# --- goal evaluation -------------------------------------------------------------------


def test_a_ratio_over_a_summed_baseline_is_met_or_missed_with_its_numbers() -> None:
    met = evaluate("demo.serving", GOALS[0], _result_json(lathe_p99=1.2))
    assert met.status is Status.MET
    assert met.figure is not None and met.figure.value == pytest.approx(1.2)
    assert met.baseline is not None and met.baseline.value == pytest.approx(1.0)
    assert [p.value for p in met.baseline_parts] == pytest.approx([0.8, 0.2])
    assert met.compared == pytest.approx(1.2) and met.compared_unit == "x"
    missed = evaluate("demo.serving", GOALS[0], _result_json(lathe_p99=1.4))
    assert missed.status is Status.MISSED
    assert missed.compared == pytest.approx(1.4)


def test_a_value_goal_judges_the_figure_itself_in_its_unit() -> None:
    verdict = evaluate("demo.serving", GOALS[1], _result_json(lathe_p99=1.2))
    assert verdict.status is Status.MISSED
    assert (verdict.compared, verdict.compared_unit) == (pytest.approx(1.2), "ms")
    assert GOALS[1].goal_text == "< 1 ms"
    assert GOALS[0].goal_text == "<= 1.3x"


def test_speedup_and_difference_compare_the_right_way_round() -> None:
    speedup = GoalSpec(
        issue=10,
        description="echo p99 / Lathe p99",
        figure="online/lathe_read/p99",
        baseline=("online/raw_echo/p99",),
        compare=Compare.SPEEDUP,
        comparator=">=",
        threshold=0.5,
    )
    difference = GoalSpec(
        issue=12,
        description="Lathe p50 - echo p50",
        figure="online/lathe_read/p50",
        baseline=("online/raw_echo/p50",),
        compare=Compare.DIFFERENCE,
        comparator=">=",
        threshold=0.25,
    )
    result = _result_json(lathe_p99=1.6)
    assert evaluate("f", speedup, result).compared == pytest.approx(0.5)
    assert evaluate("f", speedup, result).status is Status.MET
    judged = evaluate("f", difference, result)
    assert judged.compared == pytest.approx(0.2)
    assert judged.status is Status.MISSED


def test_a_figure_no_family_produces_is_not_measured_and_says_why() -> None:
    result = _result_json()
    absent = evaluate("demo.serving", GOALS[2], result)
    assert absent.status is Status.NOT_MEASURED
    assert "no variant 'lathe_sequence' in 'online'" in absent.reason
    not_run = evaluate("demo.serving", GOALS[0], None)
    assert not_run.status is Status.NOT_MEASURED
    assert not_run.reason == "the family was not run"
    failed = evaluate("demo.serving", GOALS[0], None, error="RuntimeError: boom")
    assert failed.status is Status.NOT_MEASURED
    assert "boom" in failed.reason
    no_comparison = GoalSpec(
        issue=11, description="x", figure="nowhere/a/p99", compare=Compare.VALUE
    )
    assert "no comparison 'nowhere'" in evaluate("f", no_comparison, result).reason


def test_baselines_in_different_units_are_not_summed() -> None:
    spec = GoalSpec(
        issue=11,
        description="ms + events/s",
        figure="online/lathe_read/p99",
        baseline=("online/raw_echo/p99", "throughput/raw/events_per_s"),
    )
    verdict = evaluate("f", spec, _result_json())
    assert verdict.status is Status.NOT_MEASURED
    assert "different units (e/s, ms)" in verdict.reason


def test_a_zero_baseline_cannot_judge_a_ratio() -> None:
    spec = GoalSpec(
        issue=11,
        description="raw over Lathe with Lathe at zero",
        figure="throughput/raw/events_per_s",
        baseline=("throughput/lathe/events_per_s",),
        comparator=">=",
        threshold=1.0,
    )
    verdict = evaluate("f", spec, _result_json())
    assert verdict.status is Status.NOT_MEASURED
    assert "zero" in verdict.reason


def test_a_figure_without_a_goal_is_reported() -> None:
    verdict = evaluate("f", GOALS[3], _result_json())
    assert verdict.status is Status.REPORTED
    assert verdict.compared == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"comparator": "<="}, "both comparator and threshold"),
        ({"comparator": "=~", "threshold": 1.0}, "is not one of"),
        ({"compare": Compare.RATIO}, "needs a baseline"),
        ({"figure": "online/p99", "compare": Compare.VALUE}, "<comparison>/<variant>/<metric>"),
    ],
)
def test_a_malformed_declaration_fails_at_import_with_what_to_fix(
    kwargs: dict[str, Any], message: str
) -> None:
    fields: dict[str, Any] = {"issue": 1, "description": "d", "figure": "a/b/c"}
    with pytest.raises(ValueError, match=message):
        GoalSpec(**{**fields, **kwargs})


def test_every_registered_family_declares_well_formed_goals() -> None:
    from bench.families import all_families

    families = all_families()
    issues = {spec.issue for family in families for spec in family.goals}
    assert {10, 11, 12, 13, 14} <= issues
    # the figures of issues 11 and 14 that families other work adds measure are declared
    measured_by = {(spec.measured_by, spec.figure) for f in families for spec in f.goals}
    assert ("decisioning.decide", "decide_batch1/decide/p99") in measured_by
    assert ("features.sequences", "ingest/with_last_n_view/events_per_s") in measured_by


# --- runs merged into one report -------------------------------------------------------


def test_the_report_takes_each_family_from_its_newest_run_and_flags_reduced_sizes() -> None:
    older = _results([_family_result(lathe_p99=5.0)], started_at="2026-12-07T08:00:00Z")
    newer = _results(
        [_family_result(lathe_p99=1.2, samples=1000)], started_at="2026-12-07T09:00:00Z"
    )
    other = _family((), name="demo.other")
    report = build_report(
        [("new.json", newer), ("old.json", older)],
        [_family(), other],
        generated_at="2026-12-07T10:00:00Z",
    )
    assert report["families"]["demo.serving"]["source"] == "new.json"
    assert report["families"]["demo.serving"]["full_size"] is True
    assert report["summary"] == {"met": 1, "missed": 1, "not measured": 1, "reported": 1}
    assert [g["issue"] for g in report["goals"]] == [11, 12, 13, None]
    assert [s["file"] for s in report["sources"]] == ["new.json"]

    reduced = build_report([("old.json", older)], [_family()], generated_at="t")
    assert reduced["families"]["demo.serving"]["full_size"] is False
    assert all(g["reduced_size"] for g in reduced["goals"] if g["status"] != "not measured")


def test_a_figure_measured_by_another_family_is_read_from_that_family() -> None:
    elsewhere = GoalSpec(
        issue=14,
        description="declared here, measured by demo.serving",
        figure="online/lathe_read/p99",
        baseline=("online/raw_echo/p99",),
        comparator="<=",
        threshold=2.0,
        measured_by="demo.serving",
    )
    missing = GoalSpec(
        issue=11,
        description="measured by a family not in this checkout",
        figure="a/b/c",
        compare=Compare.VALUE,
        measured_by="demo.future",
    )
    run = _results([_family_result()], started_at="2026-12-07T08:00:00Z")
    report = build_report(
        [("run.json", run)],
        [_family(), _family((elsewhere, missing), name="demo.declaring")],
        generated_at="t",
    )
    judged = {g["description"]: g for g in report["goals"]}
    assert judged[elsewhere.description]["family"] == "demo.serving"
    assert judged[elsewhere.description]["status"] == "met"
    assert judged[elsewhere.description]["compared"] == pytest.approx(1.5)
    assert judged[missing.description]["status"] == "not measured"
    assert judged[missing.description]["reason"] == (
        "no family demo.future here yet (other work adds it)"
    )


def test_a_family_that_failed_in_the_newest_run_is_not_measured() -> None:
    ok = _results([_family_result()], started_at="2026-12-07T08:00:00Z")
    failed = _results(
        [], started_at="2026-12-07T09:00:00Z", errors={"demo.serving": "RuntimeError: boom"}
    )
    report = build_report([("a.json", ok), ("b.json", failed)], [_family()], generated_at="t")
    assert report["families"] == {}
    assert report["errors"] == {"demo.serving": "RuntimeError: boom"}
    assert {g["status"] for g in report["goals"]} == {"not measured"}
    assert "boom" in render_markdown(report)


def test_load_results_reads_a_directory_once_per_run(tmp_path: Path) -> None:
    run = _results([_family_result()], started_at="2026-12-07T08:00:00Z")
    (tmp_path / "20261207T080000Z.json").write_text(json.dumps(run))
    (tmp_path / "latest.json").write_text(json.dumps(run))
    (tmp_path / "notes.json").write_text('{"something": "else"}')
    (tmp_path / "broken.json").write_text("{")
    runs = load_results(tmp_path)
    assert [name for name, _ in runs] == ["20261207T080000Z.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no bench results"):
        load_results(empty)


# --- Markdown --------------------------------------------------------------------------


def _report() -> dict[str, Any]:
    run = _results([_family_result()], started_at="2026-12-07T08:00:00Z")
    return build_report([("run.json", run)], [_family()], generated_at="2026-12-07T10:00:00Z")


def test_markdown_lists_every_goal_with_figure_baseline_and_verdict() -> None:
    text = render_markdown(_report())
    rows = {line.split(" | ")[2]: line for line in text.splitlines() if line.startswith("| 1")}
    assert rows["read p99 vs echo + pk p99"] == (
        "| 11 | `demo.serving` | read p99 vs echo + pk p99 | 1.20 ms | 1.00 ms (0.800 + 0.200) "
        "| 1.20x | <= 1.3x | met† |"
    )
    assert rows["read p99 absolute"].endswith("| 1.20 ms | — | — | < 1 ms | **MISSED**† |")
    assert (
        "*not measured*: no variant 'lathe_sequence' in 'online'"
        in rows["a sequence read the family does not produce yet"]
    )
    assert "**Goals: 1 met, 1 missed, 1 not measured; 1 figures reported without a goal.**" in text
    assert "| earlier | `demo.serving` | echo p50 reported |" in text


def test_markdown_tables_put_the_baseline_beside_lathe_and_escape_pipes() -> None:
    text = render_markdown(_report(), {"demo.serving/online": "plots/online.png"})
    assert "### Online read \\| 1 entity" in text
    table = text.split("### Online read")[1].split("\n\n")[1].splitlines()
    assert table[0] == "|  | variant | p50 (ms) | p90 (ms) | p99 (ms) | vs baseline (p99) |"
    assert table[2] == "| baseline | raw_echo label | 0.500 | 0.650 | 0.800 |  |"
    assert table[4] == "| Lathe | lathe_read label | 0.700 | 0.950 | 1.20 | 1.50x |"
    assert "![online: plot](plots/online.png)" in text
    assert "- [met] own check: 1.20 ms (target <= 2.00)" in text


# --- plots -----------------------------------------------------------------------------


def test_plots_are_png_files_for_percentiles_histograms_and_goals(tmp_path: Path) -> None:
    (tmp_path / "left-from-an-earlier-report.png").write_bytes(PNG_HEADER)
    written = write_plots(_report(), tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted(written.values())
    assert set(written) == {
        "goals",
        "demo.serving/online",  # p50/p90/p99 per variant
        "demo.serving/online/histogram",
        "demo.serving/throughput",  # the headline metric per variant
    }
    for path in written.values():
        assert path.parent == tmp_path
        assert path.read_bytes()[:8] == PNG_HEADER
        assert path.stat().st_size > 2000


def test_latency_histogram_keeps_every_sample() -> None:
    samples = [1_000_000, 1_500_000, 2_000_000, 9_000_000, 9_000_000]
    histogram = latency_histogram(samples, bins=4)
    assert sum(histogram["counts"]) == len(samples)
    assert histogram["edges_ms"][0] == 1.0 and histogram["edges_ms"][-1] == 9.0
    assert len(histogram["edges_ms"]) == len(histogram["counts"]) + 1
    assert latency_histogram([]) == {"edges_ms": [], "counts": []}


# --- the command -----------------------------------------------------------------------


def test_bench_from_a_results_file_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    run = _results([_family_result()], started_at="2026-12-07T08:00:00Z")
    source = tmp_path / "run.json"
    source.write_text(json.dumps(run))
    out = tmp_path / "report"
    assert main(["--from", str(source), "--report-dir", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["format"] == "lathe-bench-report/1"
    assert data["families"]["demo.serving"]["source"] == "run.json"
    # every family registered in bench/families.py is listed, run or not
    assert any(
        g["family"] == "inference.serving" and g["status"] == "not measured" for g in data["goals"]
    )
    assert (out / "report.md").read_text().startswith("# Lathe benchmark report")
    for relative in data["plots"].values():
        assert (out / relative).read_bytes()[:8] == PNG_HEADER


def test_bench_from_refuses_run_options(tmp_path: Path) -> None:
    assert main(["--from", str(tmp_path), "--quick"]) == 2
    assert main(["--from", str(tmp_path / "missing")]) == 2
