"""The service process's malloc tuning applies on glibc and yields to an operator's setting."""

from __future__ import annotations

import sys

import pytest

from libs.runtime.memory import return_large_buffers_to_os


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_fixes_the_mmap_threshold_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert return_large_buffers_to_os() is True


def test_an_operators_environment_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert return_large_buffers_to_os() is False
