"""CPUs to size pools by: the affinity, capped by the cgroup's CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from libs.runtime.cpus import available_cpus, cpu_quota


def _cgroup(tmp_path: Path, files: dict[str, str], own: str = "0::/\n") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    root.mkdir(parents=True, exist_ok=True)
    own_cgroup = tmp_path / "self-cgroup"
    own_cgroup.write_text(own)
    return root, own_cgroup


@pytest.mark.parametrize(
    ("files", "own", "expected"),
    [
        # A pod's container (cgroup v2, own namespace): limits.cpu "4".
        ({"cpu.max": "400000 100000\n"}, "0::/\n", 4.0),
        # Half a CPU.
        ({"cpu.max": "50000 100000\n"}, "0::/\n", 0.5),
        # No limit.
        ({"cpu.max": "max 100000\n"}, "0::/\n", None),
        # A process in a nested cgroup (no namespace): its own folder wins over the root.
        (
            {"kubepods/pod1/cpu.max": "150000 100000\n", "cpu.max": "max 100000\n"},
            "0::/kubepods/pod1\n",
            1.5,
        ),
        # cgroup v1.
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "", 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "", None),
        # Nothing readable.
        ({}, "", None),
        ({"cpu.max": "garbage\n"}, "0::/\n", None),
    ],
)
def test_the_quota_is_read_from_cgroup_v2_or_v1(
    tmp_path: Path, files: dict[str, str], own: str, expected: float | None
) -> None:
    root, own_cgroup = _cgroup(tmp_path, files, own)

    assert cpu_quota(root, own_cgroup) == expected


def test_pools_are_sized_by_the_quota_rounded_up_never_past_the_affinity(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    half, _ = _cgroup(tmp_path / "half", {"cpu.max": "50000 100000\n"})
    huge, _ = _cgroup(tmp_path / "huge", {"cpu.max": f"{(cores + 8) * 100000} 100000\n"})
    none, _ = _cgroup(tmp_path / "none", {})
    own = tmp_path / "half" / "self-cgroup"

    assert available_cpus(half, own) == 1
    assert available_cpus(huge, own) == cores
    assert available_cpus(none, own) == cores
