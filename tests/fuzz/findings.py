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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
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


def render_request(
    bodies: tuple[Body, ...], streaming: bool, seeds: Sequence[tuple[Message, ...]] = ()
) -> tuple[str, int]:
    """The request for people, and its encoded size.

    When it differs from a valid corpus request in a few fields only, those fields
    (``<path>: <valid> -> <sent>``): the one field that matters is not lost in a
    large request. Otherwise protobuf text format (raw bytes as a Python literal).
    """
    size = sum(len(b if isinstance(b, bytes) else b.SerializeToString()) for b in bodies)
    edits = _smallest_edit(bodies, seeds)
    if edits is not None:
        return _truncated(edits), size
    known = {m.SerializeToString() for seed in seeds for m in seed}
    parts = []
    for body in bodies:
        if isinstance(body, Message) and streaming and body.SerializeToString() in known:
            text = "(a valid message from the corpus)"
        elif isinstance(body, Message):
            text = text_format.MessageToString(body, as_one_line=True) or "(empty message)"
        else:
            text = f"raw bytes {body[:120]!r}" + ("..." if len(body) > 120 else "")
        parts.append(text)
    rendered = " | ".join(parts) if streaming else (parts[0] if parts else "")
    if streaming:
        rendered = f"stream of {len(bodies)}: [{rendered}]"
    return _truncated(rendered), size


def _truncated(text: str) -> str:
    if len(text) <= _REQUEST_CHARS:
        return text
    return text[:_REQUEST_CHARS] + f"... ({len(text)} chars)"


_MAX_EDITS = 4


def _smallest_edit(bodies: tuple[Body, ...], seeds: Sequence[tuple[Message, ...]]) -> str | None:
    """ "valid request with <edits>" for the closest seed, if one is a few edits away."""
    if not all(isinstance(b, Message) for b in bodies):
        return None
    best: list[str] | None = None
    best_index = 0
    for index, seed in enumerate(seeds):
        if len(seed) != len(bodies):
            continue
        edits: list[str] = []
        for position, (valid, sent) in enumerate(zip(seed, bodies, strict=True)):
            prefix = f"[{position}]." if len(bodies) > 1 else ""
            edits += _diff(valid, sent, prefix)  # type: ignore[arg-type]
        if edits and (best is None or len(edits) < len(best)):
            best, best_index = edits, index
    if best is None or len(best) > _MAX_EDITS:
        return None
    return f"valid request #{best_index + 1} of the corpus with " + "; ".join(best)


def _short(value: object) -> str:
    if isinstance(value, Message):
        text = text_format.MessageToString(value, as_one_line=True)
        return "{" + (text if len(text) <= 120 else text[:120] + "...") + "}"
    text = repr(value)
    return text if len(text) <= 120 else text[:120] + f"...({len(text)} chars)"


def _diff(valid: Message, sent: Message, prefix: str) -> list[str]:
    """``path: valid -> sent`` for each leaf where the two messages differ."""
    edits: list[str] = []
    for fd in valid.DESCRIPTOR.fields:
        path = f"{prefix}{fd.name}"
        before, after = getattr(valid, fd.name), getattr(sent, fd.name)
        is_message = fd.type == FieldDescriptor.TYPE_MESSAGE
        if fd.is_repeated and is_message and fd.message_type.GetOptions().map_entry:
            for key in sorted(set(before) | set(after), key=repr):
                if key not in after:
                    edits.append(f"{path}[{key!r}] removed")
                elif key not in before:
                    edits.append(f"{path}[{key!r}] added: {_short(after[key])}")
                elif isinstance(before[key], Message):
                    edits += _diff(before[key], after[key], f"{path}[{key!r}].")
                elif repr(before[key]) != repr(after[key]):
                    edits.append(f"{path}[{key!r}]: {_short(before[key])} -> {_short(after[key])}")
        elif fd.is_repeated:
            if len(before) != len(after):
                edits.append(f"{path}: {len(before)} -> {len(after)} items {_short(list(after))}")
                continue
            for index, (old, new) in enumerate(zip(before, after, strict=True)):
                if is_message:
                    edits += _diff(old, new, f"{path}[{index}].")
                elif repr(old) != repr(new):
                    edits.append(f"{path}[{index}]: {_short(old)} -> {_short(new)}")
        elif is_message:
            had, has = valid.HasField(fd.name), sent.HasField(fd.name)
            if had and has:
                edits += _diff(before, after, f"{path}.")
            elif had != has:
                edits.append(f"{path}: " + (f"set to {_short(after)}" if has else "cleared"))
        elif repr(before) != repr(after):
            edits.append(f"{path}: {_short(before)} -> {_short(after)}")
    return edits


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
        seeds: Sequence[tuple[Message, ...]] = (),
    ) -> Finding:
        """One finding for the call, however many rules it broke."""
        request, size = render_request(bodies, target.client_streaming, seeds)
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
