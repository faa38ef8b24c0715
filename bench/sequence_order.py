"""Does the order of events matter? The sequence transformer vs summary statistics.

``python -m bench.sequence_order [--rows 5000] [--epochs 12] [--seed 0]`` prints JSON.

A synthetic payment history per entity (ADR 0026): 0 to ``MAX_EVENTS`` payments, oldest
first, each with an amount, days late and a kind (card, bank, cash). Every entity with at
least three payments holds exactly one late payment (15+ days) and exactly one cash
payment, adjacent, within the newest N=16 but never the newest event itself; it defaults
(label 1) when the late payment comes *right before* the cash one (a late payer scraping
cash together) and not when the cash one comes first; shorter histories get a coin flip,
and 5% of labels are flipped. Both classes hold the same bag of events (one late, one
cash, the rest on time by card or bank) and the same newest event, so only the order
tells them apart. Histories longer than N are cut to the newest N, as LAST_N would.

Three models, one split, one platform loop (``services.trainer.training.loop.run``, the
job's own recipe: same preprocessing, optimizer, evaluation and export):
``sequence_transformer`` over the padded events; an ``mlp`` over summary statistics of
the same events (count, per-field mean/min/max/newest value, newest kind:
``training/summaries.py``); and the job's LightGBM baseline on those summaries.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from libs.preprocessing import SequenceColumns, fit
from services.trainer.domain.plan import WorkerPlan
from services.trainer.store.blobs import BlobStore
from services.trainer.training_columns import LABEL, SPLIT

AMOUNT, LATE, KIND = "pay:amount", "pay:days_late", "pay:kind"
INCOME = "app:income"
MAX_EVENTS = 20
MAX_LENGTH = 16
PAYMENTS = SequenceColumns("payments", (AMOUNT, LATE, KIND), MAX_LENGTH)


def synthetic(rows: int, seed: int, validation_share: float = 0.25) -> pa.Table:
    """Entities with list columns (oldest first), a scalar, ``__label`` and ``__split``."""
    rng = np.random.default_rng(seed)
    amounts, lates, kinds, labels = [], [], [], []
    for _ in range(rows):
        n = int(rng.integers(0, MAX_EVENTS + 1))
        positive = bool(rng.random() < 0.5)
        kind = [str(k) for k in rng.choice(["card", "bank"], n)]
        late = [int(d) for d in rng.integers(0, 4, n)]
        if n >= 3:
            at = int(rng.integers(max(0, n - MAX_LENGTH), n - 2))  # the pair: at, at + 1
            first, second = (at, at + 1) if positive else (at + 1, at)
            late[first], kind[first] = int(rng.integers(15, 45)), str(rng.choice(["card", "bank"]))
            kind[second] = "cash"
        amounts.append([float(a) for a in rng.lognormal(4, 1, n)] if n else None)
        lates.append(late)
        kinds.append(kind)
        labels.append(float(positive != (rng.random() < 0.05)))
    split = (np.arange(rows) >= rows * (1 - validation_share)).astype(np.int8)
    return pa.table(
        {
            INCOME: pa.array(rng.lognormal(10, 0.5, rows)),
            AMOUNT: pa.array(amounts, type=pa.list_(pa.float64())),
            LATE: pa.array(lates, type=pa.list_(pa.int64())),
            KIND: pa.array(kinds, type=pa.list_(pa.string())),
            LABEL: pa.array(labels),
            SPLIT: pa.array(split),
        }
    )


def prepare(
    root: Path, table: pa.Table, features: list[str], sequences: list[SequenceColumns]
) -> tuple[BlobStore, str, str]:
    """The job's dataset and preprocessing blobs, fitted on the training rows (as app/data)."""
    blobs = BlobStore(root)
    train = table.filter(pa.compute.equal(table.column(SPLIT), 0))
    names = features + [f for s in sequences for f in s.features]
    spec = fit({n: train.column(n) for n in names}, features, sequences=sequences)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return blobs, blobs.put_bytes(sink.getvalue().to_pybytes()), blobs.put_bytes(spec.to_json())


def train(
    blobs: BlobStore, dataset: str, preprocessing: str, family: str, hp: dict[str, Any],
    *, epochs: int, batch: int = 128, seed: int = 0, lr: float = 1e-3,
) -> dict[str, Any]:  # fmt: skip
    """One job's worker recipe in this process; its ``result`` report."""
    from services.trainer.domain.families import family as family_of
    from services.trainer.training.loop import World, run
    from services.trainer.training.progress import Progress

    attempt = str(uuid.uuid4())
    directory = blobs.root / "attempts" / attempt
    directory.mkdir(parents=True)
    plan = WorkerPlan(
        job_id="bench", attempt_id=attempt, artifact_root=str(blobs.root),
        attempt_dir=str(directory), dataset_sha256=dataset, preprocessing_sha256=preprocessing,
        family=family, hyperparameters=family_of(family).resolve(hp), epochs=epochs,
        batch_size=batch, learning_rate=lr, weight_decay=1e-5, checkpoint_every_steps=0,
        seed=seed, threads_per_process=1, device="cpu",
    )  # fmt: skip
    run(plan, World(0, 1), Progress(plan.progress_path))
    lines = [json.loads(line) for line in plan.progress_path.read_text().splitlines()]
    result = next(line for line in lines if line["event"] == "result")
    result["epochs"] = [line for line in lines if line["event"] == "epoch"]
    return result


def summary_table(table: pa.Table) -> tuple[pa.Table, list[str]]:
    """The same events as summary columns (what a bag-of-features model sees)."""
    from libs.preprocessing import transform
    from services.trainer.training.summaries import summarize

    spec = fit({n: table.column(n) for n in PAYMENTS.features}, [], sequences=[PAYMENTS])
    (s,) = transform(spec, {n: table.column(n) for n in PAYMENTS.features}).sequences
    stats = summarize(s.values, s.codes, s.mask)
    (fitted,) = spec.sequences
    stat_names = ("mean", "min", "max", "newest")
    names = ["count"] + [f"{stat}:{f.name}" for stat in stat_names for f in fitted.numeric]
    names += [f"newest:{c.name}" for c in fitted.categorical]
    columns = {INCOME: table.column(INCOME)}
    for j, name in enumerate(names):
        columns[name] = pa.array(stats[:, j])  # NaN without events: filled with the median
    columns[LABEL], columns[SPLIT] = table.column(LABEL), table.column(SPLIT)
    return pa.table(columns), [INCOME, *names]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    table = synthetic(args.rows, args.seed)
    out: dict[str, Any] = {
        "rows": args.rows,
        "epochs": args.epochs,
        "learning_rate": args.lr,
        "seed": args.seed,
        "max_length": MAX_LENGTH,
    }
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        blobs, dataset, pre = prepare(Path(tmp) / "seq", table, [INCOME], [PAYMENTS])
        hp = {"d_token": 32, "n_heads": 4, "n_blocks": 2, "attention_dropout": 0.0}
        seq = train(blobs, dataset, pre, "sequence_transformer", hp, epochs=args.epochs, lr=args.lr)
        out["sequence_transformer"] = {
            "auc": seq["metrics"]["auc"],
            "auc_by_epoch": [e["validation_auc"] for e in seq["epochs"]],
            "parity_max_abs_diff": seq["parity_max_abs_diff"],
            "seconds": time.perf_counter() - started,
        }
        out["lightgbm_on_summaries"] = {"auc": seq["baseline_metrics"]["auc"]}
        started = time.perf_counter()
        summaries, features = summary_table(table)
        blobs, dataset, pre = prepare(Path(tmp) / "mlp", summaries, features, [])
        mlp_hp = {"d_hidden": 64, "n_layers": 2}
        mlp = train(blobs, dataset, pre, "mlp", mlp_hp, epochs=args.epochs, lr=args.lr)
        out["mlp_on_summaries"] = {
            "auc": mlp["metrics"]["auc"],
            "auc_by_epoch": [e["validation_auc"] for e in mlp["epochs"]],
            "seconds": time.perf_counter() - started,
        }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
