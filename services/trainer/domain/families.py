"""Model families by name, with their hyper-parameters: what a spec may ask for.

Torch-free, so the service validates a spec without importing torch: a family names
its builder as ``module:function`` and the workers import it. ``mlp`` and
``ft_transformer`` are built in (services/trainer/training/models.py). A user plugs in
their own ``nn.Module`` factory by registering a family from a module listed in
``LATHE_TRAINER_MODEL_PLUGINS`` (imported by the service and by every worker)::

    from services.trainer.domain.families import Hyperparameter, ModelFamily, register_family

    register_family(ModelFamily(
        name="my_resnet",
        builder="my_models.resnet:build",   # build(inputs: ModelInputs, **params) -> nn.Module
        hyperparameters=(Hyperparameter("depth", int, 4, minimum=1, maximum=64),),
        description="a residual MLP",
    ))

The builder returns a module whose ``forward(numeric, categorical)`` takes float32
[batch, numeric features] and int64 [batch, categorical features] and returns logits
[batch]. A family with ``reads_sequences=True`` (``sequence_transformer``, ADR 0026) also
takes, per sequence named in the spec's ``model.sequences``, ``values`` float32
[batch, N, numeric fields], ``codes`` int64 [batch, N, categorical fields] and ``mask``
bool [batch, N] (True where an event is): ``forward(numeric, categorical, *sequences)``.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PLUGINS_ENV = "LATHE_TRAINER_MODEL_PLUGINS"


@dataclass(frozen=True)
class Hyperparameter:
    """One knob of a family, with its default and allowed range."""

    name: str
    kind: type
    """``int``, ``float``, ``bool`` or ``str``."""
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    """Allowed values of a ``str`` knob (empty: any)."""
    doc: str = ""


@dataclass(frozen=True)
class ModelFamily:
    """A named way to build a model."""

    name: str
    builder: str
    """``module:function``; ``function(inputs, **hyperparameters) -> nn.Module``."""
    hyperparameters: tuple[Hyperparameter, ...] = field(default_factory=tuple)
    description: str = ""
    reads_sequences: bool = False
    """Whether it takes sequence inputs (then a spec must name at least one, else none)."""

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` checked against the knobs, with defaults filled in; ValueError says why."""
        known = {h.name: h for h in self.hyperparameters}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(
                f"model.hyperparameters: {unknown} are not hyper-parameters of {self.name!r}; "
                f"it takes {sorted(known) or 'none'}"
            )
        return {name: _check(h, given.get(name, h.default), self.name) for name, h in known.items()}


def _check(h: Hyperparameter, value: Any, family: str) -> Any:
    where = f"model.hyperparameters.{h.name} ({family})"
    if h.kind is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        value = int(value)
    elif h.kind is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        value = float(value)
    elif h.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
    elif not isinstance(value, str) or (h.choices and value not in h.choices):
        raise ValueError(f"{where} must be one of {list(h.choices)}, got {value!r}")
    if h.minimum is not None and value < h.minimum:
        raise ValueError(f"{where} must be >= {h.minimum}, got {value}")
    if h.maximum is not None and value > h.maximum:
        raise ValueError(f"{where} must be <= {h.maximum}, got {value}")
    return value


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> None:
    """Make ``family`` available to specs by its name (a plug-in calls this on import)."""
    if family.name in _FAMILIES and _FAMILIES[family.name] != family:
        raise ValueError(f"model family {family.name!r} is registered already")
    if ":" not in family.builder:
        raise ValueError(f"builder of {family.name!r} must be 'module:function'")
    _FAMILIES[family.name] = family


def family(name: str) -> ModelFamily:
    """The family called ``name``; KeyError (naming the known ones) otherwise."""
    load_plugins()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(
            f"unknown model family {name!r}; known families: {sorted(_FAMILIES)} (plug in "
            f"your own by registering it from a module listed in ${PLUGINS_ENV})"
        ) from None


def families() -> tuple[ModelFamily, ...]:
    load_plugins()
    return tuple(_FAMILIES[name] for name in sorted(_FAMILIES))


def load_plugins() -> None:
    """Import the modules named in ``$LATHE_TRAINER_MODEL_PLUGINS`` (comma-separated)."""
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        importlib.import_module(module)


register_family(
    ModelFamily(
        name="mlp",
        builder="services.trainer.training.models:build_mlp",
        description="embeddings for categories, then Linear-ReLU-Dropout blocks and a linear head",
        hyperparameters=(
            Hyperparameter("d_hidden", int, 128, 4, 4096, doc="width of each hidden layer"),
            Hyperparameter("n_layers", int, 2, 1, 16),
            Hyperparameter("dropout", float, 0.1, 0.0, 0.9),
            Hyperparameter("d_embedding", int, 8, 1, 512, doc="per-category embedding width"),
        ),
    )
)
register_family(
    ModelFamily(
        name="ft_transformer",
        builder="services.trainer.training.models:build_ft_transformer",
        description="FT-Transformer (Gorishniy et al., 2021): a token per feature, [CLS], "
        "pre-norm transformer blocks, the head on [CLS]",
        hyperparameters=(
            Hyperparameter("d_token", int, 64, 8, 1024, doc="a multiple of n_heads"),
            Hyperparameter("n_blocks", int, 2, 1, 12),
            Hyperparameter("n_heads", int, 8, 1, 64),
            Hyperparameter("ffn_factor", float, 4 / 3, 0.5, 8.0, doc="ReGLU hidden = factor x d"),
            Hyperparameter("attention_dropout", float, 0.2, 0.0, 0.9),
            Hyperparameter("ffn_dropout", float, 0.1, 0.0, 0.9),
            Hyperparameter("residual_dropout", float, 0.0, 0.0, 0.9),
        ),
    )
)
register_family(
    ModelFamily(
        name="sequence_transformer",
        builder="services.trainer.training.sequence_model:build_sequence_transformer",
        description="a transformer over an entity's recent events (spec.model.sequences: "
        "list features, padded and masked) and its scalar feature tokens, the head on [CLS]",
        reads_sequences=True,
        hyperparameters=(
            Hyperparameter("d_token", int, 32, 8, 1024, doc="a multiple of n_heads"),
            Hyperparameter("n_blocks", int, 2, 1, 12),
            Hyperparameter("n_heads", int, 4, 1, 64),
            Hyperparameter("ffn_factor", float, 4 / 3, 0.5, 8.0, doc="ReGLU hidden = factor x d"),
            Hyperparameter("attention_dropout", float, 0.1, 0.0, 0.9),
            Hyperparameter("ffn_dropout", float, 0.1, 0.0, 0.9),
            Hyperparameter("residual_dropout", float, 0.0, 0.0, 0.9),
        ),
    )
)
