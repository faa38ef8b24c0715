"""How many CPUs this process may keep busy: its affinity, capped by its cgroup's quota.

In a Kubernetes pod, ``sched_getaffinity`` reports every core of the node while the pod's
``limits.cpu`` is a CFS quota; sizing thread pools or executors by the node's cores
would run dozens of threads on a few cores' worth of time, and the kernel throttles the
pod for it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_OWN_CGROUP = Path("/proc/self/cgroup")


def available_cpus(cgroup_root: Path = _CGROUP_ROOT, own_cgroup: Path = _OWN_CGROUP) -> int:
    """CPUs to size pools by: the affinity's count, capped by the CPU quota (rounded up)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # macOS
        cores = os.cpu_count() or 1
    quota = cpu_quota(cgroup_root, own_cgroup)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def cpu_quota(cgroup_root: Path = _CGROUP_ROOT, own_cgroup: Path = _OWN_CGROUP) -> float | None:
    """The CPU quota in CPUs (``limits.cpu``), or None without one. cgroup v2 (``cpu.max``
    in this process's cgroup, or at the root of a container's cgroup namespace) and v1
    (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``)."""
    for folder in _v2_folders(cgroup_root, own_cgroup):
        try:
            quota, period = (folder / "cpu.max").read_text().split()
        except (OSError, ValueError):
            continue
        return None if quota == "max" else int(quota) / int(period)
    try:
        quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def _v2_folders(cgroup_root: Path, own_cgroup: Path) -> list[Path]:
    """This process's cgroup v2 folder ("0::/path" in /proc/self/cgroup), then the root."""
    folders = []
    try:
        for line in own_cgroup.read_text().splitlines():
            hierarchy, _, path = line.partition("::")
            if hierarchy == "0" and path.strip("/"):
                folders.append(cgroup_root / path.strip("/"))
    except OSError:
        pass
    return [*folders, cgroup_root]
