"""`pypi_venv`: the pip virtualenv (made by `make venv`) as a Bazel repository.

No rules_python and no downloads: pip installs the pinned lock outside Bazel, and this
rule describes what it installed (venv_inventory.py). `@pypi//<name>` is one
`py_library` per distribution (PEP 503 name: `@pypi//nats-py`, `@pypi//opentelemetry-sdk`)
whose runfiles are that distribution's files and, through its deps, those of what it
requires. `@pypi` also holds the Python toolchain (registered in WORKSPACE): the venv's
python run with `-S`, so no site-packages is on sys.path and a target imports only what
its deps declare.

The repository is generated again when the lock file, this file or venv_inventory.py
change. After changing the venv by hand: `bazel sync --only=pypi`.
"""

def _pypi_venv_impl(rctx):
    workspace = rctx.path(Label("@//:WORKSPACE")).dirname
    rctx.path(rctx.attr.lockfile)  # regenerate when the lock (hence `make venv`) changes
    python = workspace.get_child(rctx.attr.venv).get_child("bin").get_child("python3")
    if not python.exists:
        fail(("\n\nNo virtualenv at {venv}: run `make venv` first (it installs " +
              "requirements/lock.txt there; Bazel builds against it offline).\n").format(
            venv = python.dirname.dirname,
        ))
    script = rctx.path(Label("//infra/bazel:venv_inventory.py"))
    rctx.report_progress("describing {} to Bazel".format(python.dirname.dirname))
    result = rctx.execute([python, "-I", script, rctx.path(".")], quiet = True)
    if result.return_code != 0:
        fail("venv_inventory.py failed on {}:\n{}{}".format(
            python.dirname.dirname,
            result.stdout,
            result.stderr,
        ))

pypi_venv = repository_rule(
    implementation = _pypi_venv_impl,
    attrs = {
        "venv": attr.string(
            default = ".venv",
            doc = "The virtualenv, relative to the workspace root.",
        ),
        "lockfile": attr.label(
            mandatory = True,
            allow_single_file = True,
            doc = "What `make venv` installs; the repository is regenerated when it changes.",
        ),
    },
    doc = "One py_library per distribution installed in a pip virtualenv, and a strict toolchain.",
)
