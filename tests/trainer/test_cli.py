"""`lathe train submit spec.yaml` follows the job live; list, show and cancel."""

from __future__ import annotations

from pathlib import Path

from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.config import LatheSettings
from tests.support.cli import run_lathe
from tests.trainer.helpers import SPLIT_DAY, T0, Dataset

SPEC = """\
model_name: {model}
feature_service: {service}
label_source:
  query: |
    SELECT loan_id, scored_at AS label_time, defaulted AS label
    FROM {labels}
split:
  validation_start: {split}
model:
  family: mlp
  hyperparameters: {{d_hidden: 16, n_layers: 1}}
optimization: {{epochs: 2, batch_size: 64, learning_rate: 0.01}}
seed: 3
"""


async def test_submit_a_yaml_spec_and_follow_it(
    trainer: TrainerStub, dataset: Dataset, test_settings: LatheSettings, tmp_path: Path
) -> None:
    from datetime import timedelta

    path = tmp_path / "credit.yaml"
    path.write_text(
        SPEC.format(
            model=dataset.model_name,
            service=dataset.feature_service,
            labels=dataset.labels,
            split=(T0 + timedelta(days=SPLIT_DAY)).isoformat(),
        )
    )

    code, output = await run_lathe(test_settings, "train", "submit", str(path))

    assert code == 0, output
    assert "queued" in output and "attempt 1 (first attempt)" in output
    assert "validation: auc" in output and f"registered {dataset.model_name} version 1" in output
    job_id = output.split("job ", 1)[1].split()[0]
    code, listed = await run_lathe(test_settings, "train", "list", "--model", dataset.model_name)
    assert code == 0 and job_id in listed and "succeeded" in listed
    code, shown = await run_lathe(test_settings, "train", "show", job_id)
    assert code == 0 and "dataset snapshot" in shown and "sha256:" in shown
    code, cancelled = await run_lathe(test_settings, "train", "cancel", job_id)
    assert code == 0 and "succeeded" in cancelled  # an ended job stays as it ended
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name: [unclosed\n")
    code, refused = await run_lathe(test_settings, "train", "submit", str(bad))
    assert code == 2 and "cannot read the spec" in refused
