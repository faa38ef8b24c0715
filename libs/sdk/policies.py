"""Policies from Python: off-policy evaluation and learning in the trainer.

    async with open_channel(settings.trainer_addr) as channel:
        client = PolicyClient(TrainerStub(channel))
        window = LogWindow.parse("7d", "repaid_margin@1")
        version, evaluation = await client.evaluate("credit-line", window)
        for estimate in evaluation.estimates: ...

``LogWindow.parse`` reads the CLI's forms: a trailing duration (``7d``, ``12h``, ``30m``),
or ``START..END`` in ISO 8601 (either end may be left out), and a reward definition
``<name>@<version>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1 import request_response_pb2 as rr
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.sdk.retries import new_request_id

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class LogWindow:
    """Which logged decisions, with which reward."""

    start: datetime | None
    end: datetime | None
    reward_definition: str
    reward_definition_version: int

    @classmethod
    def parse(cls, logs: str, reward: str, *, now: datetime | None = None) -> LogWindow:
        """ValueError says what to write instead."""
        name, sep, version = reward.rpartition("@")
        if not sep or not name or not version.isdigit() or int(version) < 1:
            raise ValueError(f"reward {reward!r}: write <definition>@<version>, e.g. margin@1")
        now = now or datetime.now(UTC)
        text = logs.strip()
        match = _DURATION.match(text)
        if match:
            seconds = float(match.group(1)) * _UNITS[match.group(2)]
            return cls(now - timedelta(seconds=seconds), None, name, int(version))
        first, dots, last = text.partition("..")
        if not dots:
            raise ValueError(
                f"logs {logs!r}: write a duration back from now (7d, 12h, 30m) or "
                "START..END in ISO 8601 (either end may be empty)"
            )
        return cls(_time(first), _time(last), name, int(version))

    def proto(self) -> message_pb2.DecisionLogWindow:
        out = message_pb2.DecisionLogWindow(
            reward_definition=self.reward_definition,
            reward_definition_version=self.reward_definition_version,
        )
        if self.start is not None:
            out.start_time.FromDatetime(self.start)
        if self.end is not None:
            out.end_time.FromDatetime(self.end)
        return out


class PolicyClient:
    def __init__(self, stub: TrainerStub, *, actor: str = "", timeout_s: float = 600.0) -> None:
        self.stub = stub
        self._metadata = (("lathe-actor", actor),) if actor else ()
        self._timeout_s = timeout_s

    async def evaluate(
        self, model_name: str, window: LogWindow, *, version: int = 0
    ) -> tuple[int, message_pb2.PolicyEvaluation]:
        """(the evaluated version, its estimates beside the logging policy's)."""
        reply = await self.stub.EvaluatePolicy(
            rr.EvaluatePolicyRequest(model_name=model_name, version=version, logs=window.proto()),
            metadata=self._metadata,
            timeout=self._timeout_s,
        )
        return reply.version, reply.evaluation

    async def learn(
        self,
        model_name: str,
        window: LogWindow,
        *,
        policy_json: str = "",
        holdout: float = 0.3,
        seed: int = 0,
        request_id: str = "",
    ) -> tuple[int, message_pb2.PolicyEvaluation]:
        """Learn, evaluate and register a new version; (its version, its estimates)."""
        reply = await self.stub.LearnPolicy(
            rr.LearnPolicyRequest(
                model_name=model_name,
                logs=window.proto(),
                policy_json=policy_json,
                holdout=holdout,
                seed=seed,
                request_id=request_id or new_request_id(),
            ),
            metadata=self._metadata,
            timeout=self._timeout_s,
        )
        return reply.version, reply.evaluation


def _time(text: str) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time (e.g. 2026-03-01T00:00:00Z)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)
