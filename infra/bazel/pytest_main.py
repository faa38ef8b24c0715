"""Entry point of every pytest_test (infra/bazel/pytest.bzl): pytest on the given files.

The working directory is the runfiles root of the workspace, where pyproject.toml sits,
so pytest takes its configuration (asyncio mode, markers) from there.
"""

from __future__ import annotations

import os
import sys

import pytest


def main(argv: list[str]) -> int:
    # No .pytest_cache written into the runfiles tree.
    args = ["-p", "no:cacheprovider", *argv]
    junit_xml = os.environ.get("XML_OUTPUT_FILE")
    if junit_xml:  # per-test-case results in Bazel's test.xml
        args.append(f"--junitxml={junit_xml}")
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
