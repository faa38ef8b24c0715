"""The inference service's own settings (``LATHE_INFERENCE_*``), beside ``LatheSettings``."""

from __future__ import annotations

import math

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.runtime.cpus import available_cpus


class InferenceSettings(BaseSettings):
    """What this service follows, how it batches, logs and which runtimes it may use."""

    model_config = SettingsConfigDict(env_prefix="LATHE_INFERENCE_", extra="ignore")

    aliases: str = Field(
        default="production,canary,shadow",
        description="Registry aliases deployed here (comma-separated). 'canary' takes its "
        "traffic_share of production's entities, 'shadow' is scored and logged only.",
    )
    models: str = Field(
        default="", description="Models deployed here (comma-separated); empty: every model."
    )
    processes: int = Field(
        default=1,
        ge=1,
        description="Server processes sharing the port (SO_REUSEPORT); 0 < n <= cores.",
    )
    executors: int = Field(
        default=0,
        ge=0,
        description="Batch executors per process (one per core); 0: cores // processes, "
        "cores being the CPUs this process may use (affinity, capped by the cgroup's quota).",
    )
    runtime_threads: int = Field(
        default=1, ge=1, description="Threads per executor inside a CPU runtime."
    )
    max_batch_rows: int = Field(default=1024, ge=1, description="Rows per executed batch.")
    max_request_rows: int = Field(default=1024, ge=1, description="Rows per Predict request.")
    max_queued_rows: int = Field(
        default=8192, ge=1, description="Rows waiting for an executor; past it RESOURCE_EXHAUSTED."
    )
    max_wait_s: float = Field(
        default=0.002,
        ge=0,
        description="Longest an executor waits for more rows (only when the cost model "
        "says waiting pays); 0 turns waiting off.",
    )
    batching: bool = Field(
        default=True,
        description="False: every request runs alone, in the batcher and in its feature "
        "call (for comparisons).",
    )
    inline_below_s: float = Field(
        default=0.001,
        ge=0,
        description="Batches the cost model expects to take less than this run on the event "
        "loop's thread (the hop to an executor thread costs more); 0: always a thread.",
    )
    feature_calls_in_flight: int = Field(
        default=1,
        ge=0,
        description="GetOnlineFeatures calls out at once (per kind of rows) before requests "
        "wait to share the next one; 0: every request calls alone.",
    )
    log_sample_rate: float = Field(
        default=0.01, ge=0, le=1, description="Share of decisions logged (hash of decision id)."
    )
    decision_log_sample_rate: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of Decide's decisions logged (hash of decision id); off-policy "
        "evaluation weighs each logged decision by 1 / this rate.",
    )
    reward_windows: str = Field(
        default="",
        description="Censoring window per reward definition, comma-separated "
        "'<definition>@<version>=<seconds>' (e.g. 'repaid_margin@1=7776000'); a reward later "
        "than decide time + window is refused as past_window (one that arrives after the window "
        "closed as arrived_late) and the decision is censored.",
    )
    default_reward_window_s: float = Field(
        default=30 * 86400.0,
        gt=0,
        allow_inf_nan=False,
        description="Censoring window of reward definitions not in reward_windows.",
    )
    log_buffer: int = Field(
        default=20_000, ge=1, description="Prediction logs held for writing; past it, dropped."
    )
    log_buffer_request_rows: int = Field(
        default=100_000,
        ge=1,
        description="Rows of the requests whose logs are held for writing (a log is built at "
        "the write from its whole request, kept until then); past it, a request's logs are "
        "dropped. Bounds the logger's memory while Postgres is away.",
    )
    runtime_preference: str = Field(
        default="tensorrt,torch_cuda,onnxruntime_cpu",
        description="Runtimes to try in order where the probe finds what they need; "
        "onnxruntime_cpu is always the last resort.",
    )
    tensorrt_precision: str = Field(default="fp32", description="fp32 or fp16 (graph converted).")
    gpu_probe: bool = Field(
        default=True, description="Probe CUDA/TensorRT in a child process (off: CPU only)."
    )
    poll_interval_s: float = Field(
        default=0.25, gt=0, description="How often a process checks for deployment requests."
    )
    work_dir: str = Field(default="", description="Downloads; default $LATHE_HOME/inference.")

    def alias_set(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.aliases.split(",") if a.strip())

    def model_set(self) -> frozenset[str]:
        return frozenset(m.strip() for m in self.models.split(",") if m.strip())

    def reward_window_map(self) -> dict[tuple[str, int], float]:
        """``reward_windows`` parsed; ValueError says which entry is malformed."""
        out: dict[tuple[str, int], float] = {}
        for entry in (e.strip() for e in self.reward_windows.split(",")):
            if not entry:
                continue
            try:
                key, seconds = entry.split("=")
                name, version = key.rsplit("@", 1)
                window = float(seconds)
                if not name or not math.isfinite(window) or window <= 0:
                    raise ValueError
                out[(name.strip(), int(version))] = window
            except ValueError:
                raise ValueError(
                    f"LATHE_INFERENCE_REWARD_WINDOWS entry {entry!r}: write "
                    "'<definition>@<version>=<seconds>', seconds a finite number > 0"
                ) from None
        return out

    def executor_count(self) -> int:
        return self.executors or max(1, available_cpus() // self.processes)
