"""Model families build, export to one ONNX file with a dynamic batch, and match torch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from services.trainer.domain.families import Hyperparameter, ModelFamily, family, register_family
from services.trainer.training import export
from services.trainer.training.models import ModelInputs, build

INPUTS = ModelInputs(n_numeric=3, cardinalities=(5, 3))


def batch(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(rows)
    numeric = torch.randn(rows, 3, generator=generator)
    categorical = torch.stack(
        [
            torch.randint(0, 5, (rows,), generator=generator),
            torch.randint(0, 3, (rows,), generator=generator),
        ],
        dim=1,
    )
    return numeric, categorical


@pytest.mark.parametrize(
    ("name", "params"),
    [("mlp", {}), ("ft_transformer", {"d_token": 16, "n_heads": 2, "n_blocks": 2})],
)
def test_families_export_one_onnx_file_that_matches_torch(name: str, params: dict) -> None:
    torch.manual_seed(0)
    model = build(name, INPUTS, family(name).resolve(params))
    numeric, categorical = batch(64)
    exported = export.export_onnx(model, numeric, categorical, opset=17)
    assert exported.parity_max_abs_diff < export.PARITY_TOLERANCE
    graph = onnx.load_from_string(exported.onnx_bytes)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) <= 22
    session = onnxruntime.InferenceSession(exported.onnx_bytes, providers=["CPUExecutionProvider"])
    numeric7, categorical7 = batch(7)  # another batch size: the batch axis is dynamic
    (p,) = session.run(None, {"numeric": numeric7.numpy(), "categorical": categorical7.numpy()})
    with torch.no_grad():
        expected = torch.sigmoid(model(numeric7, categorical7)).numpy()
    np.testing.assert_allclose(p, expected, atol=1e-5)


def test_a_parity_miss_fails_with_the_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(
        "ft_transformer", INPUTS, family("ft_transformer").resolve({"d_token": 8, "n_heads": 2})
    )
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(export.ParityError, match=r"max \|p_onnx - p_torch\| = .* over 16 rows"):
        export.export_onnx(model, *batch(16), opset=17)


def test_a_plugged_in_family_is_validated_and_built_by_name() -> None:
    register_family(
        ModelFamily(
            name="wide_mlp",
            builder="services.trainer.training.models:build_mlp",
            hyperparameters=(
                Hyperparameter("d_hidden", int, 256, 8, 1024),
                Hyperparameter("n_layers", int, 1, 1, 2),
                Hyperparameter("dropout", float, 0.0, 0.0, 0.5),
                Hyperparameter("d_embedding", int, 4, 1, 8),
            ),
        )
    )
    with pytest.raises(ValueError, match="n_layers"):
        family("wide_mlp").resolve({"n_layers": 3})
    model = build("wide_mlp", INPUTS, family("wide_mlp").resolve({}))
    assert model(*batch(4)).shape == (4,)


def test_numbers_only_and_categories_only_export() -> None:
    for inputs, names in (
        (ModelInputs(3, ()), ("numeric",)),
        (ModelInputs(0, (5, 3)), ("categorical",)),
    ):
        model = build(
            "ft_transformer", inputs, family("ft_transformer").resolve({"d_token": 8, "n_heads": 2})
        )
        numeric, categorical = batch(8)
        numeric, categorical = (
            numeric[:, : inputs.n_numeric],
            categorical[:, : len(inputs.cardinalities)],
        )
        exported = export.export_onnx(model, numeric, categorical, opset=17)
        assert exported.input_names == names and exported.parity_max_abs_diff < 1e-5
