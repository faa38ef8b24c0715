"""Proof that Bazel's Python is strict: a target imports what it declares and nothing else.

This test's deps (infra/bazel/BUILD.bazel) are the model registry's generated protos, and
through them protobuf and grpcio. Everything else in the venv (torch, nats-py, pytest...)
and every other first-party package must be out of reach, although the same interpreter
sees all of them when run without ``-S``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import unittest
from pathlib import Path


class StrictDepsTest(unittest.TestCase):
    def test_declared_distributions_import(self) -> None:
        for module in ("google.protobuf", "grpc"):
            with self.subTest(module=module):
                self.assertIsNotNone(importlib.import_module(module))

    def test_undeclared_distributions_do_not(self) -> None:
        for module in ("torch", "nats", "asyncpg", "numpy", "pydantic", "pytest"):
            with self.subTest(module=module):
                self.assertIsNone(importlib.util.find_spec(module), f"{module} leaked in")

    def test_undeclared_first_party_packages_do_not(self) -> None:
        for module in ("libs", "services", "tests", "lathe.trainer"):
            with self.subTest(module=module):
                self.assertIsNone(importlib.util.find_spec(module), f"{module} leaked in")

    def test_protos_come_from_the_genrule(self) -> None:
        stub = importlib.import_module("lathe.model_registry.v1.service_pb2")
        generated = Path(stub.__file__).resolve()
        self.assertIn("bin/protos/lathe/model_registry/v1", generated.as_posix())
        self.assertNotIn("gen/python", generated.as_posix())
        self.assertIn("ModelRegistry", stub.DESCRIPTOR.services_by_name)

    def test_no_site_packages_on_sys_path(self) -> None:
        self.assertTrue(sys.flags.no_site)
        self.assertFalse([entry for entry in sys.path if entry.endswith("/.venv/lib")])


if __name__ == "__main__":
    unittest.main()
