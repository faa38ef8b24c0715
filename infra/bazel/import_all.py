"""Import the packages named on the command line and every module below them.

Run by py_import_test (infra/bazel/checks.bzl) under the strict toolchain: only what the
test's deps declare is importable, so a ModuleNotFoundError here names a dep missing
from a BUILD file. ``__main__`` modules are skipped (importing them would run them).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback


def main(packages: list[str]) -> int:
    if not packages:
        print("usage: import_all.py PACKAGE...", file=sys.stderr)
        return 2
    imported: list[str] = []
    failed: list[str] = []

    def attempt(name: str) -> None:
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name)
            traceback.print_exc()
        else:
            imported.append(name)

    for package in packages:
        attempt(package)
        if package in failed:
            continue
        path = getattr(sys.modules[package], "__path__", [])
        for module in pkgutil.walk_packages(path, prefix=package + ".", onerror=attempt):
            if module.name.rsplit(".", 1)[-1] != "__main__":
                attempt(module.name)
    print(f"{len(imported)} passed, {len(failed)} failed")
    for name in failed:
        print(f"FAILED to import {name}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
