"""Keys of compiled engines: what a serialized engine was built from and for.

A TensorRT plan or an AOTInductor package only runs correctly on the exact graph,
runtime version, GPU architecture, precision and input shapes it was built for, so
the key names all of them: a replica finds an engine another one built (no replica
builds twice) and never loads a mismatched one. The key is stored as a tag on the
registry version that holds the engine and checked again when it is loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from libs.errors import InvalidArgument


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

    @property
    def text(self) -> str:
        """Human-readable and unique: ``tensorrt|<onnx>|10.9.0|sm90|fp16|b1-64-1024``."""
        cc = "sm" + self.compute_capability.replace(".", "")
        return "|".join(
            (
                self.runtime,
                self.onnx_sha256,
                self.runtime_version,
                cc,
                self.precision,
                self.profile.text,
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
            "engine.precision": self.precision,
            "engine.profile": self.profile.text,
        }

    def matches(self, tags: dict[str, str]) -> bool:
        """True only when every component of a stored engine's tags equals this key's."""
        return all(tags.get(name) == value for name, value in self.tags().items())
