"""Build-graph checks that run as tests (and so need no network).

- `py_import_test`: imports every module of some packages under strict deps, so a dep
  missing from a BUILD file fails `bazel test` rather than a service at start-up.
- `forbidden_deps_test`: fails when a target's runfiles carry a distribution it must not
  (the model registry must not pull torch).
"""

_IMPORT_ALL = "//infra/bazel:import_all.py"

def py_import_test(name, packages, deps, **kwargs):
    """Imports `packages` and every module below them with only `deps` available."""
    native.py_test(
        name = name,
        srcs = [_IMPORT_ALL],
        main = _IMPORT_ALL,
        args = packages,
        deps = deps,
        size = kwargs.pop("size", "small"),
        **kwargs
    )

def _normalize(name):
    """PEP 503 name with `_` for `-`: how a .dist-info directory spells a distribution."""
    normalized = name.lower()
    for separator in ["-", "."]:
        normalized = normalized.replace(separator, "_")
    return normalized

def _forbidden_deps_test_impl(ctx):
    forbidden = {_normalize(name): name for name in ctx.attr.forbidden}
    found = {}
    for file in ctx.attr.target[DefaultInfo].default_runfiles.files.to_list():
        directory = file.dirname.rsplit("/", 1)[-1]
        if file.basename == "METADATA" and directory.endswith(".dist-info"):
            distribution = _normalize(directory.split("-", 1)[0])
            if distribution in forbidden:
                found[forbidden[distribution]] = True
    script = ctx.actions.declare_file(ctx.label.name + ".sh")
    if found:
        content = "echo '{} must not depend on: {}'; exit 1\n".format(
            ctx.attr.target.label,
            ", ".join(sorted(found.keys())),
        )
    else:
        content = "echo '{} carries none of: {}'\n".format(
            ctx.attr.target.label,
            ", ".join(ctx.attr.forbidden),
        )
    ctx.actions.write(script, "#!/bin/sh\n" + content, is_executable = True)
    return [DefaultInfo(executable = script)]

forbidden_deps_test = rule(
    implementation = _forbidden_deps_test_impl,
    attrs = {
        "target": attr.label(mandatory = True, doc = "The binary or library to inspect."),
        "forbidden": attr.string_list(mandatory = True, doc = "Distribution names."),
    },
    test = True,
    doc = "Fails when `target`'s runfiles include any of the `forbidden` distributions.",
)
