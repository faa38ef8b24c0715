"""``python -m services.trainer.training.worker --plan P --attempt-id A``: one rank of an attempt.

Started by torchrun (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` in the environment), on this
machine by the local launcher or in a pod by the Kubernetes one. torchrun starts each
worker in a session of its own, so killing the agent's process group does not reach the
workers, and a SIGKILLed agent leaves them running under PID 1: each worker therefore asks
the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``), and carries the
attempt id on its command line so the service can find and kill it on cancel or recovery.

Exit codes: 0 done; 3 a failure that another attempt cannot fix (e.g. ONNX parity),
reported as a ``fatal`` error line; anything else is retried from the last checkpoint.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import traceback
from pathlib import Path

FATAL_EXIT = 3
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", required=True, type=Path)
    parser.add_argument("--attempt-id", required=True)
    parser.add_argument("--job-id", default="", help="marks the process as this job's")
    args = parser.parse_args(argv)
    _die_with_parent()

    import torch.distributed as dist

    from services.trainer.domain.families import load_plugins
    from services.trainer.domain.plan import WorkerPlan
    from services.trainer.training.export import ParityError
    from services.trainer.training.loop import World, run
    from services.trainer.training.progress import Progress

    plan = WorkerPlan.from_json(args.plan.read_text())
    if plan.attempt_id != args.attempt_id:
        print(f"plan is for attempt {plan.attempt_id}, not {args.attempt_id}", file=sys.stderr)
        return FATAL_EXIT
    os.environ.setdefault("LATHE_TRAINER_MODEL_PLUGINS", ",".join(plan.model_plugins))
    load_plugins()
    world = World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    if world.distributed:
        dist.init_process_group("nccl" if plan.device == "cuda" else "gloo")
    progress = Progress(plan.progress_path if world.rank == 0 else None)
    try:
        run(plan, world, progress)
    except ParityError as failure:
        progress.report("error", message=str(failure), fatal=True)
        return FATAL_EXIT
    except (ValueError, KeyError) as failure:  # a spec the model cannot take (e.g. d_token)
        progress.report("error", message=f"{type(failure).__name__}: {failure}", fatal=True)
        return FATAL_EXIT
    except Exception:
        progress.report("error", message=traceback.format_exc(limit=5), fatal=False)
        raise
    finally:
        if world.distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
