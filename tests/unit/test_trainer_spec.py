"""Spec validation: every bad field is refused with a message that says what to fix."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import json_format

from lathe.trainer.v1 import message_pb2
from libs.errors import InvalidArgument
from services.trainer.api.validate import job_spec
from services.trainer.domain.families import family
from services.trainer.domain.label_query import check_label_query

BASE = {
    "modelName": "credit",
    "featureService": "underwriting",
    "labelSource": {"query": "SELECT loan_id, t AS label_time, y AS label FROM labels"},
    "split": {"validationStart": "2026-01-01T00:00:00Z"},
    "model": {"family": "ft_transformer", "hyperparameters": {"d_token": 32, "n_heads": 4}},
    "optimization": {"epochs": 3},
    "seed": 1,
}


def parse(**overrides: object) -> message_pb2.TrainingJobSpec:
    return json_format.ParseDict({**BASE, **overrides}, message_pb2.TrainingJobSpec())


def test_defaults_are_filled_in_and_digested() -> None:
    valid = job_spec(parse())
    assert valid.batch_size == 256 and valid.processes == 1 and valid.threads_per_process == 1
    assert valid.hyperparameters["n_blocks"] == 2 and valid.hyperparameters["d_token"] == 32
    assert valid.proto.model.hyperparameters["ffn_dropout"] == pytest.approx(0.1)
    assert valid.labels.label_column == "label" and valid.labels.timeout_s == 60
    assert valid.split.validation_start == datetime(2026, 1, 1, tzinfo=UTC)
    assert valid.digest == job_spec(parse()).digest != job_spec(parse(seed=2)).digest


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"modelName": "Bad Name"}, "model_name"),
        ({"optimization": {"epochs": 0}}, "epochs must be at least 1"),
        ({"optimization": {"epochs": 1, "learningRate": -1}}, "learning_rate"),
        ({"optimization": {"epochs": 1, "weightDecay": -1}}, "weight_decay"),
        ({"model": {"family": "nope"}}, "unknown model family 'nope'"),
        ({"model": {"family": "mlp", "hyperparameters": {"n_layers": 0}}}, "n_layers"),
        ({"model": {"family": "mlp", "hyperparameters": {"n_layers": 1.5}}}, "must be an integer"),
        (
            {
                "model": {
                    "family": "ft_transformer",
                    "hyperparameters": {"d_token": 30, "n_heads": 4},
                }
            },
            "multiple",
        ),
        ({"split": {}}, "validation_start is required"),
        (
            {
                "split": {
                    "validationStart": "2026-01-01T00:00:00Z",
                    "validationEnd": "2025-01-01T00:00:00Z",
                }
            },
            "after",
        ),
        ({"resources": {"device": "tpu"}}, "device"),
        ({"resources": {"launcher": "slurm"}}, "launcher"),
        (
            {"resources": {"processes": 4}, "optimization": {"epochs": 1, "batchSize": 2}},
            "at least the number",
        ),
        ({"labelSource": {"query": "UPDATE labels SET y = 1"}}, "must be a SELECT"),
    ],
)
def test_bad_fields_are_refused(overrides: dict, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        job_spec(parse(**overrides))


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 1",
        "select a from t;",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "  (SELECT 1) UNION (SELECT 2)",
        "SELECT ';' AS semi, $$;$$ AS dollar -- a comment; with a semicolon\n FROM t",
        "/* DELETE; */ SELECT 1",
    ],
)
def test_single_selects_pass(query: str) -> None:
    assert check_label_query(query)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("SELECT 1; SELECT 2", "single SELECT"),
        ("SELECT 1; DROP TABLE t", "single SELECT"),
        ("DELETE FROM t", "not DELETE"),
        ("INSERT INTO t VALUES (1)", "not INSERT"),
        ("", "required"),
        ("-- only a comment", "must be a SELECT"),
    ],
)
def test_anything_else_is_refused(query: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        check_label_query(query)


def test_families_name_their_knobs() -> None:
    with pytest.raises(ValueError, match="it takes"):
        family("mlp").resolve({"depth": 3})
    assert family("mlp").resolve({})["d_hidden"] == 128
