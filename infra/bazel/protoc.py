"""``python -m grpc_tools.protoc`` as a Bazel tool (py_proto_library in proto.bzl runs it).

grpcio-tools ships protoc and the well-known .proto files (google/protobuf/*.proto); run
as ``__main__`` it adds their directory to the import path itself.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("grpc_tools.protoc", run_name="__main__", alter_sys=True)
