"""The sequence transformer: masks padding exactly, stays finite without events, exports."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from libs.preprocessing import EncodedBatch, PreprocessingSpec, SequenceColumns, fit, transform
from services.trainer.domain.families import family
from services.trainer.training import export
from services.trainer.training.models import ModelInputs, build

AMOUNT, LATE, KIND = "pay:amount", "pay:days_late", "pay:kind"
PARAMS = {"d_token": 16, "n_heads": 2, "n_blocks": 2}


def _columns(rows: int, seed: int = 0, *, with_scalars: bool = True) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {AMOUNT: [], LATE: [], KIND: []}
    for i in range(rows):
        n = 0 if i % 4 == 0 else int(rng.integers(1, 9))  # every 4th entity: no events
        columns[AMOUNT].append(rng.lognormal(3, 1, n).tolist() if n or i % 8 else None)
        columns[LATE].append(rng.integers(0, 30, n).tolist() if n or i % 8 else None)
        columns[KIND].append(rng.choice(["card", "bank", "cash"], n).tolist() if n or i % 8 else [])
    if with_scalars:
        columns["app:income"] = rng.lognormal(10, 0.5, rows).tolist()
        columns["app:grade"] = rng.choice(["A", "B", "C"], rows).tolist()
    return columns


def _spec(
    *, with_scalars: bool = True, fields: tuple[str, ...] = (AMOUNT, LATE, KIND)
) -> PreprocessingSpec:
    scalars = ["app:income", "app:grade"] if with_scalars else []
    return fit(
        _columns(64, with_scalars=with_scalars),
        scalars,
        sequences=[SequenceColumns("payments", fields, max_length=5)],
    )


def _tensors(encoded: EncodedBatch) -> tuple[torch.Tensor, ...]:
    parts = [torch.from_numpy(encoded.numeric), torch.from_numpy(encoded.categorical)]
    for s in encoded.sequences:
        parts += [torch.from_numpy(s.values), torch.from_numpy(s.codes), torch.from_numpy(s.mask)]
    return tuple(parts)


def _model(spec: PreprocessingSpec) -> torch.nn.Module:
    torch.manual_seed(0)
    name = "sequence_transformer"
    return build(name, ModelInputs.of(spec), family(name).resolve(PARAMS)).eval()


def test_what_sits_in_padding_slots_never_changes_the_output() -> None:
    spec = _spec()
    model = _model(spec)
    inputs = _tensors(transform(spec, _columns(32, seed=1)))
    numeric, categorical, values, codes, mask = inputs
    noisy_values = torch.where(mask[..., None], values, torch.randn(values.shape) * 100)
    noisy_codes = torch.where(mask[..., None], codes, torch.randint(0, 4, codes.shape))
    assert not torch.equal(noisy_values, values)
    with torch.no_grad():
        clean = model(*inputs)
        noisy = model(numeric, categorical, noisy_values, noisy_codes, mask)
    assert torch.equal(clean, noisy)


def test_an_entity_without_events_scores_finite_and_events_matter() -> None:
    spec = _spec()
    model = _model(spec)
    columns = _columns(8, seed=2)
    empty = {k: ([[]] * 8 if k in (AMOUNT, LATE, KIND) else v) for k, v in columns.items()}
    with torch.no_grad():
        none = model(*_tensors(transform(spec, {k: v[:8] for k, v in empty.items()})))
        some = model(*_tensors(transform(spec, columns)))
    assert torch.isfinite(none).all() and torch.isfinite(some).all()
    assert not torch.equal(none[1:], some[1:])  # rows 1..7 have events


def test_gradients_stay_finite_on_a_batch_of_empty_histories() -> None:
    spec = _spec()
    model = _model(spec).train()
    empty = {AMOUNT: [None] * 4, LATE: [[]] * 4, KIND: [None] * 4}
    empty |= {"app:income": [1.0] * 4, "app:grade": ["A"] * 4}
    loss = model(*_tensors(transform(spec, empty))).sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    ("with_scalars", "fields"),
    [
        (True, (AMOUNT, LATE, KIND)),
        (False, (AMOUNT, LATE, KIND)),
        (False, (AMOUNT,)),
        (True, (KIND,)),
    ],
)
def test_onnx_matches_torch_with_and_without_events(
    with_scalars: bool, fields: tuple[str, ...]
) -> None:
    spec = _spec(with_scalars=with_scalars, fields=fields)
    model = _model(spec)
    encoded = transform(spec, _columns(64, seed=3, with_scalars=with_scalars))
    numeric, categorical, *seq = _tensors(encoded)
    exported = export.export_onnx(
        model, numeric, categorical, opset=17, sequences=[("payments", *seq)]
    )
    assert exported.parity_max_abs_diff < export.PARITY_TOLERANCE
    graph = onnx.load_from_string(exported.onnx_bytes)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) <= 22
    described = {i["name"]: i for i in exported.onnx_inputs}
    assert described["payments.mask"] == {
        "name": "payments.mask",
        "dtype": "bool",
        "shape": [-1, 5],
    }
    if AMOUNT in fields:
        assert described["payments.values"]["shape"] == [-1, 5, len(spec.sequences[0].numeric)]
    # Another batch size, only entities without events among them: same as torch.
    rows = _columns(9, seed=4, with_scalars=with_scalars)
    rows = {k: ([None] * 9 if k in fields else v) for k, v in rows.items()}
    batch = transform(spec, rows)
    feeds = {n: a for n, a in batch.arrays().items() if n in exported.input_names}
    session = onnxruntime.InferenceSession(exported.onnx_bytes, providers=["CPUExecutionProvider"])
    (p,) = session.run(None, feeds)
    with torch.no_grad():
        expected = torch.sigmoid(model(*_tensors(batch))).numpy()
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, expected, atol=1e-5)


def test_tabular_families_refuse_sequence_inputs() -> None:
    with pytest.raises(ValueError, match="does not read sequence inputs"):
        build("mlp", ModelInputs.of(_spec()), family("mlp").resolve({}))


@pytest.mark.parametrize(
    ("with_scalars", "fields"),
    [(True, (AMOUNT, LATE, KIND)), (False, (AMOUNT,)), (True, (KIND,))],
)
def test_every_parameter_gets_a_gradient(with_scalars: bool, fields: tuple[str, ...]) -> None:
    """DDP waits for a gradient of every parameter: an unused one stalls a 2-process job."""
    spec = _spec(with_scalars=with_scalars, fields=fields)
    model = _model(spec).train()
    model(
        *_tensors(transform(spec, _columns(16, seed=5, with_scalars=with_scalars)))
    ).sum().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert unused == []


def test_ft_transformer_on_numbers_only_has_no_unused_parameters() -> None:
    model = build("ft_transformer", ModelInputs(3, ()), family("ft_transformer").resolve(PARAMS))
    model(torch.randn(4, 3), torch.zeros(4, 0, dtype=torch.long)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
