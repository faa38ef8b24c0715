"""One-line summaries of registry events for the audit history (pure logic)."""

from __future__ import annotations

from google.protobuf.message import Message

from lathe.model_registry.v1 import events_pb2
from services.model_registry.app.policy import describe_gate, describe_policy_gate


def summarize(message: Message) -> str:
    match message:
        case events_pb2.ModelCreated():
            return f"model created, owner {message.owner}"
        case events_pb2.PromotionPolicySet():
            parts = []
            for protected in message.policy.protected_aliases:
                rules = [describe_gate(g) for g in protected.gates]
                rules += [describe_policy_gate(g) for g in protected.policy_value_gates]
                if protected.require_approval:
                    rules.append("approval")
                parts.append(f"{protected.alias} ({', '.join(rules) or 'no rules'})")
            return "promotion policy: " + ("; ".join(parts) or "nothing protected")
        case events_pb2.ModelVersionRegistered():
            details = [f"{len(message.artifacts)} artifacts"]
            details += [f"{k}={v:g}" for k, v in sorted(message.metrics.items())]
            return f"version {message.version} registered ({', '.join(details)})"
        case events_pb2.ModelVersionApproved():
            return f"version {message.version} approved for {message.alias}"
        case events_pb2.AliasSet():
            share = f" at {message.traffic_share:.0%} traffic" if message.traffic_share else ""
            before = message.previous_version or "-"
            return f"alias {message.alias}: {before} -> {message.version}{share}"
        case events_pb2.AliasDeleted():
            return f"alias {message.alias} deleted (was {message.previous_version})"
        case events_pb2.ArtifactCorruptionDetected():
            return f"artifact {message.sha256[:12]} failed its digest check"
        case _:
            return message.DESCRIPTOR.name
