"""pytest under Bazel: one py_test per test file, run by infra/bazel/pytest_main.py.

Each test runs the venv's python with -S (strict deps), in its own runfiles tree, with
the repository's pyproject.toml as pytest's configuration. tests/conftest.py (live
Postgres and NATS) is not part of it: give a test that needs fixtures its own conftest.py
beside it (pytest_suite adds every non-test .py of the package to each test).
"""

_RUNNER = "//infra/bazel:pytest_main.py"

def pytest_test(name, tests, srcs = [], deps = [], data = [], args = [], **kwargs):
    """A py_test running pytest on the files `tests`; `srcs` are helpers they import."""
    package = native.package_name()
    native.py_test(
        name = name,
        srcs = [_RUNNER] + tests + srcs,
        main = _RUNNER,
        args = args + [(package + "/" + test) if package else test for test in tests],
        data = data + ["//:pyproject.toml"],
        deps = deps + ["@pypi//pytest", "@pypi//pytest-asyncio"],
        **kwargs
    )

def pytest_suite(name, tests = None, srcs = None, deps = [], data = [], size = "small", sizes = {}, **kwargs):
    """One pytest_test per test file, and a test_suite `name` over them.

    Args:
      name: the test_suite over them (name it after the package: `bazel test //tests/unit`).
      tests: the test files (default: test_*.py and *_test.py, here and in subdirectories
        without a BUILD file of their own), so a new file is picked up without editing BUILD.
      srcs: the other .py files every test needs (default: the rest of the package's .py,
        __init__.py and conftest.py included).
      deps: what the tests import (strict: an import not declared here fails).
      data: files the tests read.
      size: Bazel's test size (small: 60 s timeout).
      sizes: per test (file name without .py), a size other than `size`.
      **kwargs: passed to every pytest_test.
    """
    if tests == None:
        tests = native.glob(["**/test_*.py", "**/*_test.py"])
    if srcs == None:
        srcs = native.glob(["**/*.py"], exclude = tests)
    names = []
    for test in tests:
        test_name = test[:-len(".py")]
        pytest_test(
            name = test_name,
            tests = [test],
            srcs = srcs,
            deps = deps,
            data = data,
            size = sizes.get(test_name, size),
            **kwargs
        )
        names.append(":" + test_name)
    native.test_suite(name = name, tests = names)
