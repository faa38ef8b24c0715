"""Export, compile, check parity and time the GPU runtimes; writes JSON. Run on a GPU host.

    .venv/bin/python infra/gpu/torch_cuda_check.py --out gpu-results.json

``--torch-device cpu`` runs the torch_cuda rows with C++ kernels instead (a dry run of the
script and the runtime on a machine without a GPU; timings then mean nothing).

For an MLP, an FT-Transformer and a sequence transformer (the trainer's families,
untrained, exported as the trainer exports them; the sequence model with 1 row in 4
without events): ONNX Runtime on CPU as the reference, then PyTorch on CUDA
(AOTInductor, fp32 and fp16) and TensorRT (fp32 and fp16, only where its builder is
installed), each checked against the reference (fp32 <= 1e-5, fp16 <= 5e-3) and timed
at batch 1, 64 and 1024 (p50/p99 of --iterations calls, host arrays in and out).
A runtime that is not available is reported with the reason, never skipped silently.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path[:0] = [
    str(Path(__file__).resolve().parents[2]),
    str(Path(__file__).resolve().parents[2] / "gen" / "python"),
]

from libs.preprocessing import SequenceColumns, fit, transform  # noqa: E402
from services.inference.domain.parity import compare, tolerance  # noqa: E402
from services.inference.runtimes.keys import BatchProfile, EngineKey  # noqa: E402
from services.inference.runtimes.probe import probe_gpu  # noqa: E402
from services.trainer.domain.families import family as family_named  # noqa: E402
from services.trainer.training.export import export_onnx  # noqa: E402
from services.trainer.training.models import (  # noqa: E402
    ModelInputs,
    build,
    build_ft_transformer,
    build_mlp,
)

BATCHES = (1, 64, 1024)


FAMILIES = ("mlp", "ft_transformer", "sequence_transformer")
PROFILE = BatchProfile(1, 64, 1024)


def _sequence_model() -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    n = 2048
    lengths = [0 if i % 4 == 0 else int(rng.integers(1, 20)) for i in range(n)]
    columns = {f"f:x{i}": rng.normal(size=n).tolist() for i in range(8)}
    columns["p:amount"] = [rng.lognormal(size=k).tolist() for k in lengths]
    columns["p:kind"] = [rng.choice(list("ABCDEF"), k).tolist() for k in lengths]
    sequences = [SequenceColumns("p", ("p:amount", "p:kind"), max_length=16)]
    spec = fit(columns, [f"f:x{i}" for i in range(8)], sequences=sequences)
    torch.manual_seed(0)
    model = build(
        "sequence_transformer",
        ModelInputs.of(spec),
        family_named("sequence_transformer").resolve({"d_token": 64, "n_heads": 8}),
    )
    encoded = transform(spec, columns)
    (s,) = encoded.sequences
    exported = export_onnx(
        model,
        torch.from_numpy(encoded.numeric[:256]),
        torch.from_numpy(encoded.categorical[:256]),
        opset=17,
        sequences=[("p", *(torch.from_numpy(a[:256]) for a in (s.values, s.codes, s.mask)))],
    )
    feeds = {k: a for k, a in encoded.arrays().items() if k in exported.input_names}
    return exported.onnx_bytes, feeds


def _model(family: str) -> tuple[bytes, dict[str, np.ndarray]]:
    if family == "sequence_transformer":
        return _sequence_model()
    rng = np.random.default_rng(0)
    n = 2048
    columns = {f"f:x{i}": rng.normal(size=n).tolist() for i in range(16)}
    columns.update({f"f:c{i}": rng.choice(list("ABCDEFGH"), n).tolist() for i in range(4)})
    spec = fit(columns, list(columns))
    inputs = ModelInputs(len(spec.numeric), tuple(c.cardinality for c in spec.categorical))
    torch.manual_seed(0)
    if family == "mlp":
        model = build_mlp(inputs, d_hidden=256, n_layers=3, dropout=0.0, d_embedding=8)
    else:
        model = build_ft_transformer(
            inputs,
            d_token=64,
            n_blocks=3,
            n_heads=8,
            ffn_factor=4 / 3,
            attention_dropout=0.0,
            ffn_dropout=0.0,
            residual_dropout=0.0,
        )
    encoded = transform(spec, columns)
    exported = export_onnx(
        model,
        torch.from_numpy(encoded.numeric[:256]),
        torch.from_numpy(encoded.categorical[:256]),
        opset=17,
    )
    return exported.onnx_bytes, {"numeric": encoded.numeric, "categorical": encoded.categorical}


def _time(run, feeds: dict[str, np.ndarray], iterations: int) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    out = {}
    for batch in BATCHES:
        part = {
            k: np.ascontiguousarray(np.resize(v, (batch, *v.shape[1:]))) for k, v in feeds.items()
        }
        for _ in range(10):
            run(part)
        samples = []
        for _ in range(iterations):
            started = time.perf_counter_ns()
            run(part)
            samples.append((time.perf_counter_ns() - started) / 1e6)
        out[str(batch)] = {
            "p50_ms": float(np.percentile(samples, 50)),
            "p99_ms": float(np.percentile(samples, 99)),
            "rows_per_s": batch / (float(np.median(samples)) / 1e3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu-results.json")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument(
        "--torch-device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="cpu: a dry run of this script's torch_cuda rows with C++ kernels (no GPU)",
    )
    args = parser.parse_args()
    caps = probe_gpu()
    report: dict[str, object] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "gpu": caps.__dict__,
        },
        "models": {},
    }
    for family in FAMILIES:
        onnx_bytes, feeds = _model(family)
        # Parity on as many rows as the engines' profile allows (a run past it is refused).
        checked = {k: v[: PROFILE.max_rows] for k, v in feeds.items()}
        reference = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        expected = reference.run(None, checked)
        results: dict[str, object] = {
            "onnxruntime_cpu": {
                "timing": _time(lambda f, r=reference: r.run(None, f), feeds, args.iterations)
            }
        }
        for runtime, precision in (
            ("torch_cuda", "fp32"),
            ("torch_cuda", "fp16"),
            ("tensorrt", "fp32"),
            ("tensorrt", "fp16"),
        ):
            name = f"{runtime}_{precision}"
            on_cpu = runtime == "torch_cuda" and args.torch_device == "cpu"
            if not on_cpu and (
                not caps.cuda or (runtime == "tensorrt" and not caps.tensorrt_builder)
            ):
                why = caps.reason or "no TensorRT builder"
                results[name] = {"skipped": why}
                continue
            version = (
                caps.tensorrt_version
                if runtime == "tensorrt"
                else f"torch{caps.torch_version}-cuda{caps.cuda_version}"
            )
            key = EngineKey(
                runtime,
                "bench",
                version,
                caps.compute_capability,
                precision,
                PROFILE,
                device=caps.device,
            )
            try:
                started = time.perf_counter()
                if runtime == "tensorrt":
                    from services.inference.runtimes.tensorrt import TensorRtRuntime as R
                else:
                    from services.inference.runtimes.torch_cuda import TorchCudaRuntime as R
                if on_cpu:
                    built = R.create(onnx_bytes, key, None, "infra/gpu dry run", device="cpu")
                else:
                    built = R.create(onnx_bytes, key, None, "infra/gpu check")
                build_s = time.perf_counter() - started
                parity = compare(expected, built.run(checked), tolerance(precision))
                results[name] = {
                    "device": "cpu" if on_cpu else "cuda",
                    "build_seconds": build_s,
                    "engine": built.info.selection_reason,
                    "parity_max_abs_diff": parity.max_abs_diff,
                    "parity_ok": parity.ok,
                    "timing": _time(built.run, feeds, args.iterations),
                }
            except Exception as exc:  # report, keep going with the others
                results[name] = {"failed": f"{type(exc).__name__}: {exc}"}
        report["models"][family] = results  # type: ignore[index]
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
