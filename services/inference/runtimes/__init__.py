"""Runtimes behind one small interface: ONNX Runtime (CPU), TensorRT, PyTorch on CUDA.

``base.Runtime`` is all a deployment needs: ``run(feeds) -> outputs``. ``selection``
decides which runtime a version gets from the operator's preference and what the
child-process ``probe`` found; ``build.build_runtime`` builds it, checks parity and
falls back to ONNX Runtime on CPU when a GPU runtime cannot be had, saying why.
"""
