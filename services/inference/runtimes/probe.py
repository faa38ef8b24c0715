"""What this machine can run on a GPU, found out in a child process.

Importing TensorRT or initialising CUDA where the driver or the device is missing can
abort the whole process (not raise), so the inference process never does it first: a
short-lived child imports torch and tensorrt, asks CUDA for the device and creates a
TensorRT builder, and prints what it found as JSON. A crash, a hang (timeout) or any
missing piece only means "no GPU runtime here", with the reason kept for
ListDeployments.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_log = logging.getLogger(__name__)

_PROBE = r"""
import json
found = {"cuda": False, "torch_cuda": False, "tensorrt_version": "", "builder": False,
         "compute_capability": "", "device": "", "torch_version": "", "cuda_version": "",
         "reasons": []}
try:
    import torch
    found["torch_version"] = torch.__version__
    found["cuda_version"] = torch.version.cuda or ""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        found.update(compute_capability=f"{major}.{minor}", device=torch.cuda.get_device_name(0))
        # CUDA counts only once a kernel ran: a device torch has no kernels for (or a
        # broken driver) fails here, and the service must then not initialise CUDA itself.
        torch.zeros(1, device="cuda").add_(1).cpu()
        found.update(cuda=True, torch_cuda=True)
    else:
        found["reasons"].append("torch sees no CUDA device")
except Exception as exc:
    found["reasons"].append(f"torch/CUDA: {type(exc).__name__}: {exc}")
try:
    import tensorrt as trt
    found["tensorrt_version"] = trt.__version__
    if found["cuda"]:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        found["builder"] = builder is not None
        if not found["builder"]:
            found["reasons"].append("tensorrt.Builder could not be created")
    else:
        found["reasons"].append("tensorrt is installed but there is no working CUDA device")
except Exception as exc:
    found["reasons"].append(f"tensorrt: {type(exc).__name__}: {exc}")
print(json.dumps(found))
"""


@dataclass(frozen=True)
class Capabilities:
    """GPU facts of this machine (all false/empty without one)."""

    cuda: bool = False
    torch_cuda: bool = False
    tensorrt_version: str = ""
    tensorrt_builder: bool = False
    compute_capability: str = ""
    device: str = ""
    torch_version: str = ""
    cuda_version: str = ""
    reason: str = ""
    """Why a GPU runtime is not available, when one is not."""


def no_nvidia_device() -> str:
    """Why there is certainly no NVIDIA GPU here ("" when there may be one): no driver
    device node and no driver entry, so the probe's child need not even start."""
    if Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia[0-9]*")):
        return ""
    return "no NVIDIA device on this machine (/dev/nvidia* and /proc/driver/nvidia absent)"


def probe_gpu(timeout_s: float = 120.0, python: str = sys.executable) -> Capabilities:
    """Run the probe in a child process; never raises."""
    try:
        done = subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return Capabilities(reason=f"the GPU probe did not finish within {timeout_s:.0f}s")
    except OSError as exc:
        return Capabilities(reason=f"the GPU probe could not start: {exc}")
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return Capabilities(reason=f"the GPU probe crashed ({done.returncode}): {tail[0]}")
    return parse_probe(done.stdout)


def parse_probe(output: str) -> Capabilities:
    """The probe's JSON (its last line) as ``Capabilities``."""
    try:
        found = json.loads(output.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return Capabilities(reason="the GPU probe printed no result")
    return Capabilities(
        cuda=bool(found.get("cuda")),
        torch_cuda=bool(found.get("torch_cuda")),
        tensorrt_version=str(found.get("tensorrt_version", "")),
        tensorrt_builder=bool(found.get("builder")),
        compute_capability=str(found.get("compute_capability", "")),
        device=str(found.get("device", "")),
        torch_version=str(found.get("torch_version", "")),
        cuda_version=str(found.get("cuda_version", "")),
        reason="; ".join(found.get("reasons", [])),
    )
