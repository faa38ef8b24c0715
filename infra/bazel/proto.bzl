"""`py_proto_library`: Python stubs for a directory of .proto files, generated offline.

Native `proto_library` wants `@com_google_protobuf//:protoc`, a download; instead a
genrule runs grpcio-tools' protoc (`//infra/bazel:protoc`, from the venv) and emits
`<file>_pb2.py` and `<file>_pb2_grpc.py` per .proto, importable under the proto package
(`protos/lathe/model_registry/v1/service.proto` -> `lathe.model_registry.v1.service_pb2`).
"""

def _with_name(label):
    """`//a/b` -> `//a/b:b`, so a suffix can be appended to name a sibling target."""
    if ":" in label:
        return label
    return label + ":" + label.rsplit("/", 1)[-1]

def py_proto_library(name, srcs = None, deps = [], proto_root = "protos", visibility = None):
    """Generates and wraps the stubs of `srcs` (default: every .proto in the package).

    Args:
      name: the py_library; `<name>_protos` is the filegroup of its .proto files.
      srcs: the .proto files of this package.
      deps: other py_proto_library targets whose .proto files these import.
      proto_root: the directory the import paths in .proto files start from.
      visibility: of the py_library and the filegroup.
    """
    if srcs == None:
        srcs = native.glob(["*.proto"])
    package = native.package_name()
    if not package.startswith(proto_root + "/"):
        fail("py_proto_library must sit below {}/, not in {}".format(proto_root, package))
    inputs = srcs + [_with_name(dep) + "_protos" for dep in deps]
    outs = []
    for src in srcs:
        stem = src[:-len(".proto")]
        outs += [stem + "_pb2.py", stem + "_pb2_grpc.py"]

    native.filegroup(
        name = name + "_protos",
        srcs = inputs,
        visibility = visibility,
    )
    native.genrule(
        name = name + "_gen",
        srcs = inputs,
        outs = outs,
        tools = ["//infra/bazel:protoc"],
        cmd = " ".join([
            "$(execpath //infra/bazel:protoc)",
            "-I" + proto_root,
            "--python_out=$(GENDIR)/" + proto_root,
            "--grpc_python_out=$(GENDIR)/" + proto_root,
        ] + ["$(execpath {})".format(src) for src in srcs]),
        message = "Generating Python stubs for " + package,
    )
    native.py_library(
        name = name,
        srcs = outs,
        # sys.path gets proto_root, so `lathe.<domain>.v1` resolves to the generated files.
        imports = ["/".join([".."] * (package.count("/") - proto_root.count("/")))],
        deps = [_with_name(dep) for dep in deps] + ["@pypi//grpcio", "@pypi//protobuf"],
        visibility = visibility,
    )
