"""Keys of compiled engines: what a serialized engine was built from and for.

A TensorRT plan or an AOTInductor package only runs correctly on the exact graph,
runtime version, GPU architecture and model, precision and input shapes it was built
for, and it is only as right as Lathe's own conversion code that produced it, so the
key names all of them: a replica finds an engine another one built (no replica builds
twice) and never loads a mismatched one. The key is stored as a tag on the registry
version that holds the engine and checked again when it is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import cache

from libs.errors import InvalidArgument
from services.inference.runtimes.base import TENSORRT, TORCH_CUDA

_PACKAGE = "services.inference.runtimes"
CONVERTER_MODULES: dict[str, tuple[str, ...]] = {
    TENSORRT: ("fp16", "tensorrt"),
    TORCH_CUDA: ("fp16", "onnx_to_torch", "torch_cuda"),
}
"""The modules of this package whose code shapes each runtime's engine: the graph
conversions (``fp16.to_fp16``, ``fp16.within_half_range``, ``onnx_to_torch``) and the
runtime's own build settings. Their source is hashed into the key."""


@cache
def converter_version(runtime: str) -> str:
    """A short digest of the source of ``runtime``'s converter modules.

    Derived, not a number to bump: a fix to a conversion has changed engines' output
    before, and an engine built before the fix must not be found under the same key.
    Any edit (a comment too) means one rebuild per key, which is cheap by comparison.
    """
    digest = hashlib.sha256()
    for name in CONVERTER_MODULES.get(runtime, ()):
        digest.update(f"{name}\0{_source(f'{_PACKAGE}.{name}')}\0".encode())
    return digest.hexdigest()[:16]


def _source(module: str) -> str:
    """A module's source, read without importing it (runtimes are imported when chosen)."""
    spec = importlib.util.find_spec(module)
    loader = spec.loader if spec is not None else None
    source = loader.get_source(module) if loader is not None else None  # type: ignore[attr-defined]
    if source is None:  # nothing to hash: the key could not tell conversions apart
        raise RuntimeError(f"the source of {module} is not available to key its engines")
    return str(source)


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine is optimised for (TensorRT optimisation profile)."""

    min_rows: int
    opt_rows: int
    max_rows: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_rows <= self.opt_rows <= self.max_rows:
            raise InvalidArgument(
                f"a batch profile needs 1 <= min <= opt <= max, got "
                f"{self.min_rows}/{self.opt_rows}/{self.max_rows}"
            )

    @property
    def text(self) -> str:
        return f"b{self.min_rows}-{self.opt_rows}-{self.max_rows}"


@dataclass(frozen=True)
class EngineKey:
    """Everything a compiled engine depends on."""

    runtime: str
    """``tensorrt`` or ``torch_cuda``."""
    onnx_sha256: str
    runtime_version: str
    """TensorRT's version, or torch's + CUDA's."""
    compute_capability: str
    """The GPU architecture, e.g. ``9.0`` (H100)."""
    precision: str
    profile: BatchProfile
    device: str = ""
    """The GPU model (the probe's ``device``, e.g. ``NVIDIA H100 80GB HBM3``): by default a
    TensorRT plan is only valid on the model it was built on, not on every GPU of its
    compute capability."""
    converter: str = ""
    """``converter_version(runtime)``, filled in when not given (tests give their own)."""

    def __post_init__(self) -> None:
        if not self.converter:  # derived here so that no caller can leave it out
            object.__setattr__(self, "converter", converter_version(self.runtime))

    @property
    def text(self) -> str:
        """Human-readable and unique:
        ``tensorrt|<onnx>|10.9.0|sm90|NVIDIA H100|fp16|b1-64-1024|conv-<digest>``."""
        cc = "sm" + self.compute_capability.replace(".", "")
        return "|".join(
            (
                self.runtime,
                self.onnx_sha256,
                self.runtime_version,
                cc,
                self.device,
                self.precision,
                self.profile.text,
                "conv-" + self.converter,
            )
        )

    @property
    def digest(self) -> str:
        """A short stable id of the key (registry tag values are free text, but short)."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:32]

    def tags(self) -> dict[str, str]:
        """Tags on the registry version that stores the engine (all checked on load)."""
        return {
            "engine.key": self.digest,
            "engine.runtime": self.runtime,
            "engine.onnx_sha256": self.onnx_sha256,
            "engine.runtime_version": self.runtime_version,
            "engine.compute_capability": self.compute_capability,
            "engine.device": self.device,
            "engine.precision": self.precision,
            "engine.profile": self.profile.text,
            "engine.converter": self.converter,
        }

    def matches(self, tags: dict[str, str]) -> bool:
        """True only when every component of a stored engine's tags equals this key's."""
        return all(tags.get(name) == value for name, value in self.tags().items())
