"""Every RPC of every service, fuzzed from the proto descriptors (issue 10).

Three tests per RPC, one per ``<service>.<Method>`` found in the descriptors:

- ``test_sweep``: every field of every valid corpus request set to each boundary value
  in turn, one field at a time (``sweep``);
- ``test_fields``: requests built field by field from the request's descriptor
  (boundary, garbage and plausible values; valid requests mutated a few fields at a
  time; for client-streaming RPCs, valid message sequences with messages mutated,
  dropped, repeated or swapped);
- ``test_garbage_bytes``: request bodies that are not a valid message at all.

Each call must end in a deliberate status with a useful message, leave the service
SERVING, and write nothing unless it succeeded (``oracle`` says exactly what counts).
A failure lists every distinct finding with the smallest request that showed it.

Run just these: ``.venv/bin/python -m pytest tests/fuzz -q``; longer:
``LATHE_FUZZ_EXAMPLES=500``; other inputs than the fixed default ones:
``LATHE_FUZZ_SEED=<n>``; keep the findings: ``LATHE_FUZZ_FINDINGS=findings.jsonl``.
"""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from hypothesis import strategies as st

from tests.fuzz.descriptor_strategies import MessageStrategies, copy_of
from tests.fuzz.garbage import garbage_bytes
from tests.fuzz.platform import FuzzPlatform, examples_per_method
from tests.fuzz.sweep import sweep
from tests.fuzz.targets import Body, FuzzTarget, discover_targets

TARGETS = discover_targets()


def _field_requests(
    target: FuzzTarget, platform: FuzzPlatform
) -> st.SearchStrategy[tuple[Body, ...]]:
    strategies = MessageStrategies(platform.hints)
    single = strategies.message(target.method.input_type)
    if not target.client_streaming:
        return single.map(lambda message: (message,))
    options = [st.lists(single, max_size=4).map(tuple)]
    sequences = platform.seeds.get(target.path, [])
    if sequences:
        options.append(_edited_stream(sequences, strategies))
    return st.one_of(options)


def _edited_stream(
    sequences: list[tuple[Message, ...]], strategies: MessageStrategies
) -> st.SearchStrategy[tuple[Body, ...]]:
    """A valid message sequence with one or two edits: a message mutated, dropped,
    repeated, moved, or a random one inserted."""

    @st.composite
    def edited(draw: st.DrawFn) -> tuple[Body, ...]:
        messages = [copy_of(m) for m in draw(st.sampled_from(sequences))]
        for _ in range(draw(st.integers(1, 2))):
            edit = draw(st.sampled_from(("mutate", "drop", "repeat", "move", "insert")))
            at = draw(st.integers(0, max(0, len(messages) - 1)))
            if edit == "insert" or not messages:
                descriptor = (messages or draw(st.sampled_from(sequences)))[0].DESCRIPTOR
                messages.insert(at, draw(strategies.message(descriptor)))
            elif edit == "mutate":
                messages[at] = draw(strategies.mutated(st.just(messages[at]).map(copy_of)))
            elif edit == "drop":
                del messages[at]
            elif edit == "repeat":
                messages.insert(at, copy_of(messages[at]))
            else:
                messages.insert(draw(st.integers(0, len(messages) - 1)), messages.pop(at))
        return tuple(messages)

    return edited()


def _garbage_requests(
    target: FuzzTarget, platform: FuzzPlatform
) -> st.SearchStrategy[tuple[Body, ...]]:
    sequences = platform.seeds.get(target.path, [])
    valid = [m.SerializeToString() for sequence in sequences for m in sequence]
    garbage = garbage_bytes(valid)
    options = [garbage.map(lambda body: (body,))]
    if target.client_streaming and sequences:
        # A valid first message, then garbage: decoding fails mid-stream.
        options.append(
            st.tuples(st.sampled_from(sequences), garbage).map(lambda p: (p[0][0], p[1]))
        )
    return st.one_of(options)


@pytest.mark.parametrize("target", TARGETS, ids=str)
async def test_sweep(fuzz_platform: FuzzPlatform, target: FuzzTarget) -> None:
    await fuzz_platform.prepare(target)
    # No valid request in the corpus: sweep an empty one (every field, from unset).
    sequences = fuzz_platform.seeds.get(target.path) or [(target.request_type(),)]
    requests = sweep(
        sequences,
        8 * examples_per_method(),
        streaming=target.client_streaming,
        fresh=not target.read_only,
    )
    await fuzz_platform.send_all(target, requests)


@pytest.mark.parametrize("target", TARGETS, ids=str)
async def test_fields(fuzz_platform: FuzzPlatform, target: FuzzTarget) -> None:
    await fuzz_platform.prepare(target)
    await fuzz_platform.explore(
        target, _field_requests(target, fuzz_platform), examples_per_method()
    )


@pytest.mark.parametrize("target", TARGETS, ids=str)
async def test_garbage_bytes(fuzz_platform: FuzzPlatform, target: FuzzTarget) -> None:
    await fuzz_platform.prepare(target)
    await fuzz_platform.explore(
        target, _garbage_requests(target, fuzz_platform), max(10, examples_per_method() // 3)
    )


def test_every_service_and_rpc_is_fuzzed() -> None:
    """The walk covers all four services, including the shells, from the descriptors."""
    services = {t.service.value for t in TARGETS}
    assert services == {"feature_store", "model_registry", "trainer", "inference"}
    assert len({t.path for t in TARGETS}) == len(TARGETS) >= 28
