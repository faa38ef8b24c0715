"""A sequence model through the job's worker recipe and into the inference service's model.

The trainer's jobs read their training set from the feature store, which does not serve
list (``LAST_N``) features yet (issue 6, another branch), so this runs the job's worker
recipe (``training.loop.run``: data, training, evaluation, LightGBM baseline, export with
its parity check, artifacts) on an Arrow table with list columns, prepared the way the
job's data phase prepares it (``app/data.sequence_columns`` + ``libs.preprocessing.fit``).
The exported artifacts then load into the inference service's ``LoadedModel`` (its own
graph checks, fixed-row warm-up and parity) and score rows given as Python lists equal
to torch.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load as load_safetensors

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.feature_store.v1 import request_response_pb2 as fs_rr
from lathe.trainer.v1 import message_pb2
from libs.errors import FailedPrecondition
from libs.preprocessing import PreprocessingSpec, SequenceColumns, fit, transform
from services.inference.app.loading import LoadFailure, build
from services.inference.app.model import VersionFiles
from services.inference.runtimes.build import BuildOptions
from services.inference.runtimes.keys import BatchProfile
from services.inference.runtimes.probe import Capabilities
from services.trainer.app.data import sequence_columns
from services.trainer.domain.families import family
from services.trainer.domain.plan import WorkerPlan
from services.trainer.store.blobs import BlobStore
from services.trainer.training.loop import World, run
from services.trainer.training.models import ModelInputs
from services.trainer.training.models import build as build_model
from services.trainer.training.progress import Progress
from services.trainer.training_columns import LABEL, SPLIT

HP = {"d_token": 16, "n_heads": 2, "n_blocks": 1}
AMOUNT, LATE, KIND, INCOME = "pay:amount", "pay:days_late", "pay:kind", "app:income"
PAYMENTS = SequenceColumns("payments", (AMOUNT, LATE, KIND), 16)


def synthetic(rows: int, seed: int) -> pa.Table:
    """Payment histories (0-20 events, oldest first) whose label follows a late payment
    right before a cash one; a quarter of the rows validate. (bench/sequence_order.py
    measures the model on a harder version of this.)"""
    rng = np.random.default_rng(seed)
    amounts, lates, kinds, labels = [], [], [], []
    for _ in range(rows):
        n = int(rng.integers(0, 21))
        kind = [str(k) for k in rng.choice(["card", "bank", "cash"], n)]
        late = [int(d) for d in rng.integers(0, 40, n)]
        labels.append(float(any(late[i] > 15 and kind[i + 1] == "cash" for i in range(n - 1))))
        amounts.append([float(a) for a in rng.lognormal(4, 1, n)] if n else None)
        lates.append(late)
        kinds.append(kind)
    return pa.table(
        {
            INCOME: pa.array(rng.lognormal(10, 0.5, rows)),
            AMOUNT: pa.array(amounts, type=pa.list_(pa.float64())),
            LATE: pa.array(lates, type=pa.list_(pa.int64())),
            KIND: pa.array(kinds, type=pa.list_(pa.string())),
            LABEL: pa.array(labels),
            SPLIT: pa.array((np.arange(rows) >= rows * 3 // 4).astype(np.int8)),
        }
    )


def train(blobs: BlobStore, dataset: str, preprocessing: str, *, epochs: int) -> dict:
    """One job's worker recipe (rank 0 of 1) in this process; its ``result`` report."""
    attempt = str(uuid.uuid4())
    directory = blobs.root / "attempts" / attempt
    directory.mkdir(parents=True)
    plan = WorkerPlan(
        job_id="test", attempt_id=attempt, artifact_root=str(blobs.root),
        attempt_dir=str(directory), dataset_sha256=dataset, preprocessing_sha256=preprocessing,
        family="sequence_transformer", hyperparameters=family("sequence_transformer").resolve(HP),
        epochs=epochs, batch_size=64, learning_rate=1e-3, weight_decay=0.0,
        checkpoint_every_steps=0, seed=0, threads_per_process=1, device="cpu",
    )  # fmt: skip
    run(plan, World(0, 1), Progress(plan.progress_path))
    lines = [json.loads(line) for line in plan.progress_path.read_text().splitlines()]
    result = next(line for line in lines if line["event"] == "result")
    result["epochs"] = [line for line in lines if line["event"] == "epoch"]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[BlobStore, dict]:
    table = synthetic(480, seed=3)
    model = message_pb2.ModelSpec(
        family="sequence_transformer",
        sequences=[
            message_pb2.SequenceInput(
                name=PAYMENTS.name, features=list(PAYMENTS.features), max_length=16
            )
        ],
    )
    sequences = sequence_columns(model, table.schema)  # the job's data phase
    blobs = BlobStore(tmp_path_factory.mktemp("trainer"))
    train_rows = table.filter(pa.compute.equal(table.column(SPLIT), 0))
    names = [INCOME, *PAYMENTS.features]
    spec = fit({n: train_rows.column(n) for n in names}, [INCOME, *PAYMENTS.features],
               sequences=sequences)  # fmt: skip
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    dataset = blobs.put_bytes(sink.getvalue().to_pybytes())
    result = train(blobs, dataset, blobs.put_bytes(spec.to_json()), epochs=2)
    result["dataset_sha256"] = dataset
    return blobs, result


def test_the_recipe_trains_evaluates_and_exports_a_sequence_model(
    trained: tuple[BlobStore, dict],
) -> None:
    blobs, result = trained
    assert set(result["metrics"]) >= {"auc", "log_loss", "ks", "ece"}
    assert all(np.isfinite(v) for v in result["metrics"].values())
    assert np.isfinite(result["baseline_metrics"]["auc"])  # LightGBM on sequence summaries
    assert result["parity_max_abs_diff"] < 1e-5
    assert len(result["epochs"]) == 2
    spec = PreprocessingSpec.from_json(blobs.get_bytes(result["preprocessing_sha256"]))
    assert spec.version == 2 and spec.sequences[0].name == "payments"
    assert spec.feature_names == (INCOME, AMOUNT, LATE, KIND)
    signature = json.loads(blobs.get_bytes(result["signature_sha256"]))
    assert signature["onnx_inputs"] == [
        {"name": "numeric", "dtype": "float32", "shape": [-1, 1]},
        {"name": "payments.values", "dtype": "float32", "shape": [-1, 16, 2]},
        {"name": "payments.codes", "dtype": "int64", "shape": [-1, 16, 1]},
        {"name": "payments.mask", "dtype": "bool", "shape": [-1, 16]},
    ]
    assert signature["sequences"] == [
        {
            "name": "payments",
            "features": [AMOUNT, LATE, KIND],
            "max_length": 16,
            "padding": "left",
            "order": "oldest first",
            "inputs": ["payments.values", "payments.codes", "payments.mask"],
        }
    ]
    types = {i["name"]: i["arrow_type"] for i in signature["inputs"]}
    assert types[AMOUNT] == "list<item: double>" and types[KIND] == "list<item: string>"


def test_the_inference_model_scores_sequences_like_torch(trained: tuple[BlobStore, dict]) -> None:
    blobs, result = trained
    spec = PreprocessingSpec.from_json(blobs.get_bytes(result["preprocessing_sha256"]))
    files = VersionFiles(
        model_name="seq",
        version=1,
        onnx=blobs.get_bytes(result["onnx_sha256"]),
        onnx_sha256=result["onnx_sha256"],
        preprocessing=spec,
        feature_service="",
        feature_service_version="",
        tags={},
    )
    options = BuildOptions(1, "fp32", BatchProfile(1, 8, 64), Capabilities())
    loaded = build(files, ("onnxruntime_cpu",), options, None)  # graph checks, warm, parity
    assert loaded.parity.ok
    model = loaded.model
    columns: dict[str, list] = {
        INCOME: [50_000.0, None, 20_000.0, 31_000.0],
        AMOUNT: [[10.0, 20.0, 5.0], None, [], [float(i) for i in range(30)]],
        LATE: [[0, 30, 1], None, [], [i % 40 for i in range(30)]],
        KIND: [["card", "bank", "cash"], None, [], ["cash", "card", "bitcoin"] * 10],
    }
    scores = model.score(model.rows_from_columns(columns))[:, 0]

    hp = family("sequence_transformer").resolve(HP)
    torch_model = build_model("sequence_transformer", ModelInputs.of(spec), hp)
    torch_model.load_state_dict(load_safetensors(blobs.get_bytes(result["weights_sha256"])))
    torch_model.eval()
    encoded = transform(spec, columns)
    arrays = [torch.from_numpy(a) for a in encoded.arrays().values()]
    with torch.no_grad():
        expected = torch.sigmoid(torch_model(*arrays)).numpy()
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, expected, atol=1e-5)

    # From a feature store reply: an absent sequence value is "no events".
    names = (INCOME, AMOUNT, LATE, KIND)
    income = fs.Value(float64_value=20_000.0)
    vectors = [fs_rr.FeatureVector(values=[income, fs.Value(), fs.Value(), fs.Value()])]
    replied = model.score(model.rows_from_reply(names, vectors))
    np.testing.assert_allclose(replied[0], scores[2], atol=1e-6)
    scalar = fs_rr.FeatureVector(
        values=[income, fs.Value(), fs.Value(), fs.Value(string_value="x")]
    )
    with pytest.raises(FailedPrecondition, match="not as a list of events"):
        model.rows_from_reply(names, [scalar])


def test_the_data_phase_refuses_sequences_that_are_not_lists(tmp_path: Path) -> None:
    table = pa.table({INCOME: [1.0], AMOUNT: [2.0], LABEL: [1.0], SPLIT: [0]})
    model = message_pb2.ModelSpec(
        family="sequence_transformer",
        sequences=[message_pb2.SequenceInput(name="p", features=[AMOUNT], max_length=4)],
    )
    with pytest.raises(FailedPrecondition, match="is double, not a list per row"):
        sequence_columns(model, table.schema)
    model.sequences[0].features[:] = ["pay:nope"]
    with pytest.raises(FailedPrecondition, match="does not have"):
        sequence_columns(model, table.schema)
    assert sequence_columns(message_pb2.ModelSpec(family="mlp"), table.schema) == []
    listed = table.append_column(LATE, pa.array([[1]], type=pa.list_(pa.int64())))
    with pytest.raises(FailedPrecondition, match=r"serves list features \['pay:days_late'\]"):
        sequence_columns(message_pb2.ModelSpec(family="mlp"), listed.schema)
    with pytest.raises(ValueError, match="holds a list per row; name it in a sequence"):
        fit({LATE: listed.column(LATE)}, [LATE])
    model.sequences[0].features[:] = [LATE]
    assert sequence_columns(model, listed.schema) == [SequenceColumns("p", (LATE,), 4, "left")]


def test_a_graph_whose_sequence_shape_differs_from_the_spec_is_refused(
    trained: tuple[BlobStore, dict],
) -> None:
    blobs, result = trained
    spec = PreprocessingSpec.from_json(blobs.get_bytes(result["preprocessing_sha256"]))
    shorter = dataclasses.replace(
        spec, sequences=(dataclasses.replace(spec.sequences[0], max_length=8),)
    )
    files = VersionFiles("seq", 1, blobs.get_bytes(result["onnx_sha256"]), result["onnx_sha256"],
                         shorter, "", "", {})  # fmt: skip
    options = BuildOptions(1, "fp32", BatchProfile(1, 8, 64), Capabilities())
    with pytest.raises(LoadFailure, match=r"'payments.values' is \[batch, 16, 2\] but "
                       r"preprocessing.json produces \[batch, 8, 2\]"):  # fmt: skip
        build(files, ("onnxruntime_cpu",), options, None)


def test_the_same_data_and_seed_give_the_same_model(trained: tuple[BlobStore, dict]) -> None:
    blobs, first = trained
    again = train(blobs, first["dataset_sha256"], first["preprocessing_sha256"], epochs=2)
    assert again["metrics"] == first["metrics"]
    assert again["weights_sha256"] == first["weights_sha256"]
    assert again["baseline_metrics"] == first["baseline_metrics"]
