"""The child process of a policy job: ``python -m services.trainer.policies.worker <dir>``.

Reads ``<dir>/job.json`` and ``<dir>/logs.npz`` (``LoggedDecisions``' arrays); for
``evaluate`` also ``<dir>/target.onnx``. Writes ``<dir>/result.json`` (the report's
metrics) and, for ``learn``, ``<dir>/model.onnx`` and ``<dir>/policy.json``. A refusal
(logs or spec that cannot be used) is ``result.json`` with ``error``; anything else is a
crash (exit status != 0, stderr kept by the parent).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

_ARRAYS = (
    "numeric",
    "categorical",
    "actions",
    "propensities",
    "rewards",
    "eligible",
    "sample_weights",
    "logging_probabilities",
)


def save_logs(path: Path, logs: object, holdout: np.ndarray | None = None) -> None:
    arrays = {name: getattr(logs, name) for name in _ARRAYS}
    if holdout is not None:
        arrays["holdout"] = holdout
    np.savez(path, **arrays)


def main(directory: Path) -> int:
    import torch

    from libs.decisioning.distribution import distribution
    from libs.decisioning.evaluate import evaluate
    from libs.decisioning.export import run_scorer
    from libs.decisioning.learning import LearningConfig
    from libs.decisioning.logs import LoggedDecisions, LogsError
    from libs.decisioning.opl import learn_policy
    from libs.decisioning.spec import PolicySpec, PolicySpecError

    torch.set_num_threads(1)
    job = json.loads((directory / "job.json").read_text())
    data = np.load(directory / "logs.npz")
    result: dict[str, object]
    try:
        spec = PolicySpec.from_json(job["policy_json"])
        logs = LoggedDecisions(
            *(data[name] for name in _ARRAYS[:6]),
            tuple(spec.action_names),
            sample_weights=data["sample_weights"],
            logging_probabilities=data["logging_probabilities"],
        )
        if job["mode"] == "evaluate":
            onnx_bytes = (directory / "target.onnx").read_bytes()
            scores = run_scorer(onnx_bytes, logs.numeric, logs.categorical, output=spec.output)
            report = evaluate(logs, distribution(spec, scores, logs.eligible))
            result = {"metrics": report.metrics()}
        else:
            learned = learn_policy(
                logs,
                spec,
                job["cardinalities"],
                holdout=data["holdout"],
                learning=LearningConfig(seed=int(job.get("seed", 0))),
            )
            (directory / "model.onnx").write_bytes(learned.onnx_bytes)
            (directory / "policy.json").write_bytes(learned.spec.to_json())
            result = {"metrics": learned.metrics}
    except (LogsError, PolicySpecError, ValueError) as exc:
        result = {"error": str(exc)}
    (directory / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
