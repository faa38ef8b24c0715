"""A sequence model's job against the real feature store, registry and trainer.

The feature store does not serve list (``LAST_N``) features yet (issue 6, another branch),
so a job cannot train a sequence model end to end here: the recipe itself is tested on an
Arrow table with list columns (tests/unit/test_sequence_training.py). What is tested here is
the job's wiring: a sequence spec passes submit, reaches the data phase, and a feature that
is not a list per row fails the job with a reason that says what to fix.
"""

from __future__ import annotations

from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from tests.trainer.helpers import DONE, Dataset, spec, submit, wait_for


async def test_a_sequence_of_scalar_features_fails_the_job_saying_why(
    trainer: TrainerStub, dataset: Dataset
) -> None:
    rate = f"apps_{dataset.suffix}:rate"
    job_id = await submit(
        trainer,
        spec(
            dataset,
            model={
                "family": "sequence_transformer",
                "hyperparameters": {"d_token": 16, "n_heads": 2, "n_blocks": 1},
                "sequences": [{"name": "payments", "features": [rate], "maxLength": 8}],
            },
        ),
    )
    job = await wait_for(trainer, job_id, DONE)
    assert job.state == message_pb2.JOB_STATE_FAILED
    assert f"feature '{rate}' is double, not a list per row" in job.failure_reason
    assert job.spec.model.sequences[0].padding == "left"  # recorded with defaults
