"""Which runtime a version gets: the operator's preference, filtered by what the probe found.

The result is an ordered list of candidates, each with the reason it is there; the
runtimes that were skipped are named with why (e.g. "tensorrt: no CUDA device"), so
ListDeployments shows not only what runs but why nothing faster does. ONNX Runtime on
CPU is always the last candidate: a deployment never fails for want of a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from libs.errors import InvalidArgument
from services.inference.runtimes.base import KINDS, ONNXRUNTIME_CPU, TENSORRT, TORCH_CUDA
from services.inference.runtimes.probe import Capabilities


@dataclass(frozen=True)
class Candidate:
    runtime: str
    reason: str


@dataclass(frozen=True)
class Plan:
    candidates: tuple[Candidate, ...]
    skipped: tuple[str, ...]
    """``"<runtime>: <why not>"`` for each preferred runtime left out."""


def parse_preference(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        raise InvalidArgument(f"unknown runtimes {unknown}; choose from {sorted(KINDS)}")
    return names


def plan_runtimes(preference: Sequence[str], caps: Capabilities) -> Plan:
    candidates: list[Candidate] = []
    skipped: list[str] = []
    for name in preference:
        if name == TENSORRT:
            if not caps.cuda:
                skipped.append(f"tensorrt: no CUDA device ({caps.reason or 'probe found none'})")
            elif not caps.tensorrt_version:
                skipped.append("tensorrt: the tensorrt package is not installed")
            elif not caps.tensorrt_builder:
                skipped.append(f"tensorrt: no builder ({caps.reason})")
            else:
                candidates.append(
                    Candidate(
                        TENSORRT,
                        f"TensorRT {caps.tensorrt_version} on {caps.device} "
                        f"(sm {caps.compute_capability})",
                    )
                )
        elif name == TORCH_CUDA:
            if not caps.torch_cuda:
                skipped.append(f"torch_cuda: no CUDA device ({caps.reason or 'probe found none'})")
            else:
                candidates.append(
                    Candidate(TORCH_CUDA, f"PyTorch {caps.torch_version} on {caps.device}")
                )
        elif name == ONNXRUNTIME_CPU:
            break
    reason = "the default" if not skipped else "fallback: " + "; ".join(skipped)
    candidates.append(Candidate(ONNXRUNTIME_CPU, reason))
    return Plan(tuple(candidates), tuple(skipped))
