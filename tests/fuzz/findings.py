"""Distinct findings of a fuzz run, each with the smallest request that showed it.

Findings are grouped by service, method, kind, status code and the shape of the
status message (ids, numbers and quoted values blanked), so a thousand NUL-in-a-name
calls are one finding. The smallest request seen for each is kept: Hypothesis shrinks
failing examples, and every shrink step passes through here. Set
``LATHE_FUZZ_FINDINGS=<path>`` to also write them as JSON lines at the end of the run.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import Message

from tests.fuzz.oracle import Outcome, Problem, message_shape
from tests.fuzz.targets import Body, FuzzTarget

_REQUEST_CHARS = 700
_DETAILS_CHARS = 400


@dataclass(frozen=True)
class Finding:
    """One distinct way one RPC misbehaved."""

    service: str
    method: str
    kind: str
    """Which rules the call broke, e.g. ``status+message`` (see ``oracle.judge``)."""
    code: str
    summary: str
    details: str
    """The status message as the server sent it (truncated)."""
    cause: str
    """The exception the service logged meanwhile (type, Lathe frame, text), or ""."""
    request: str
    """The smallest request that showed it, in protobuf text format (truncated)."""
    request_size: int

    @property
    def key(self) -> tuple[str, ...]:
        return (
            self.service,
            self.method,
            self.kind,
            self.code,
            message_shape(self.details),
            message_shape(self.cause),
        )

    def describe(self) -> str:
        # Behind INTERNAL the message is boilerplate; the logged cause says more.
        said = f"cause: {self.cause}" if self.cause else (self.details or "(no message)")
        return (
            f"{self.service} {self.method}: {self.summary} -- {self.code}: {said}"
            f"\n      request: {self.request}"
        )


def render_request(bodies: tuple[Body, ...], streaming: bool) -> tuple[str, int]:
    """Text format of the request (raw bytes as a Python literal) and its encoded size."""
    parts, size = [], 0
    for body in bodies:
        if isinstance(body, Message):
            encoded = body.SerializeToString()
            text = text_format.MessageToString(body, as_one_line=True) or "(empty message)"
        else:
            encoded, text = body, f"raw bytes {body[:120]!r}" + ("..." if len(body) > 120 else "")
        parts.append(text)
        size += len(encoded)
    rendered = " | ".join(parts) if streaming else (parts[0] if parts else "")
    if streaming:
        rendered = f"stream of {len(bodies)}: [{rendered}]"
    if len(rendered) > _REQUEST_CHARS:
        rendered = rendered[:_REQUEST_CHARS] + f"... ({len(rendered)} chars)"
    return rendered, size


class Findings:
    """Thread-safe: Hypothesis runs in a worker thread, reports are read in the loop's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, ...], Finding] = {}

    def record(
        self,
        target: FuzzTarget,
        bodies: tuple[Body, ...],
        outcome: Outcome,
        problems: list[Problem],
    ) -> Finding:
        """One finding for the call, however many rules it broke."""
        request, size = render_request(bodies, target.client_streaming)
        finding = Finding(
            service=target.service.display_name,
            method=target.method.name,
            kind="+".join(p.kind for p in problems),
            code=outcome.code.name,
            summary="; ".join(p.summary for p in problems),
            details=outcome.details[:_DETAILS_CHARS],
            cause=outcome.cause,
            request=request,
            request_size=size,
        )
        with self._lock:
            known = self._by_key.get(finding.key)
            if known is None or size < known.request_size:
                self._by_key[finding.key] = finding
            return self._by_key[finding.key]

    def get(self, key: tuple[str, ...]) -> Finding:
        """The smallest-request finding recorded under ``key``."""
        with self._lock:
            return self._by_key[key]

    def all(self) -> list[Finding]:
        with self._lock:
            return sorted(self._by_key.values(), key=lambda f: f.key)

    def write(self, path: Path) -> None:
        with path.open("a") as out:
            for finding in self.all():
                out.write(json.dumps(asdict(finding)) + "\n")


def finding_type(finding: Finding) -> type[AssertionError]:
    """An exception class per distinct finding, so Hypothesis shrinks and reports each one
    (it tells bugs apart by exception type and place)."""
    digest = hashlib.sha1(repr(finding.key).encode()).hexdigest()[:10]
    cached = _TYPES.get(digest)
    if cached is None:
        cached = _TYPES[digest] = type(f"FuzzFinding_{digest}", (AssertionError,), {})
    return cached


_TYPES: dict[str, type[AssertionError]] = {}


def load(paths: list[Path]) -> list[Finding]:
    """Findings from ``LATHE_FUZZ_FINDINGS`` files, merged (smallest request per key)."""
    merged = Findings()
    for path in paths:
        for line in path.read_text().splitlines():
            finding = Finding(**json.loads(line))
            known = merged._by_key.get(finding.key)
            if known is None or finding.request_size < known.request_size:
                merged._by_key[finding.key] = finding
    return merged.all()


def markdown(findings: list[Finding]) -> str:
    """One section per RPC, one entry per distinct finding."""
    lines: list[str] = []
    current = ("", "")
    for f in sorted(findings, key=lambda f: (f.service, f.method, f.code, f.cause, f.details)):
        if (f.service, f.method) != current:
            current = (f.service, f.method)
            lines += ["", f"### {f.service} `{f.method}`", ""]
        what = f"**{f.code}**" + (f" ({f.kind})" if f.kind != "status" else "")
        lines.append(f"- {what}: {f.summary}.")
        if f.cause:
            lines.append(f"  - cause: `{f.cause}`")
        elif f.details:
            lines.append(f"  - message: `{f.details[:200]}`")
        lines.append(f"  - request: `{f.request[:400]}`")
    return "\n".join(lines).strip() + "\n"


if __name__ == "__main__":
    import sys

    print(markdown(load([Path(p) for p in sys.argv[1:]])))
