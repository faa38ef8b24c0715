"""Step: the challenger goes out as a canary on a share of production's traffic; the
held-out slice is scored again and the split is counted."""

from __future__ import annotations

from collections import Counter

from rich.table import Table

from lathe.model_registry.v1 import request_response_pb2 as rr
from libs.cli.demo.context import ACTOR, DemoRun, Step
from libs.cli.demo.metrics import auc
from libs.cli.demo.promotion import wait_for_deployment
from libs.cli.demo.serving import predict_all

CANARY_SHARE = 0.2


async def canary(run: DemoRun) -> None:
    challenger = run.trained["challenger"]
    alias = await run.c.registry.SetAlias(
        rr.SetAliasRequest(
            model_name=run.model_name,
            alias="canary",
            version=challenger.version,
            traffic_share=CANARY_SHARE,
        ),
        metadata=[("lathe-actor", ACTOR)],
    )
    run.console.print(
        f"{ACTOR}: canary -> v{alias.alias.version} ({challenger.family}) with "
        f"traffic_share {CANARY_SHARE:.0%} (canary is not a protected alias)"
    )
    with run.progress("inference follows the canary alias event", None) as bar:
        await wait_for_deployment(run, "canary", challenger.version, bar)
    loans = run.validation_loans
    answers = await predict_all(run, loans, "score the held-out slice again")
    arms = Counter((answer[2], answer[1]) for answer in answers.values())
    table = Table("arm", "version", "rows", "share", "AUC on its rows")
    for (arm, version), rows in sorted(arms.items()):
        mine = [loan for loan in loans if answers[loan][1:] == (version, arm)]
        table.add_row(
            arm,
            f"v{version}",
            f"{rows:,}",
            f"{rows / len(loans):.1%}",
            f"{auc([run.labels[x] for x in mine], [answers[x][0] for x in mine]):.4f}",
        )
    run.console.print(table)
    run.console.print(
        "the split is by a hash of the entity, so a loan always gets the same arm; "
        "`lathe deployments list` shows both"
    )
    run.report["canary"] = {
        "version": challenger.version,
        "traffic_share": CANARY_SHARE,
        "rows_by_arm": {f"{arm} v{version}": rows for (arm, version), rows in arms.items()},
    }


STEP = Step("Canary: the challenger takes a share of production's traffic", canary)
