"""A fitted model of what a batch costs, and the one rule that lets an executor wait.

A runtime's time for a batch of n rows is close to affine, ``fixed + per_row * n``
(a kernel launch / session overhead, then work per row); ``CostModel`` fits it by
exponentially weighted least squares from every executed batch, so it follows the
machine as load changes.

Work conservation: an executor that is free takes what is queued at once. Waiting for
more rows only helps when it saves a batch's fixed cost that would otherwise be spent
on requests arriving right behind this batch, and only when nobody else could run those
rows sooner. ``wait_seconds`` says to wait (at most ``max_wait_s``, and never past the
earliest deadline minus the batch's own predicted time) only when no other executor is
idle, the batch is not already full, and more than one *request* is expected to arrive
within the fixed cost (by the recent arrival rate, and no more than are known to be on
their way) — the point where merging them saves more executor time than the
wait idles it. Requests, not rows: the rows of one request arrive together, so a lone
client sending 256-row requests back to back must not make the executor wait for
rows that can only come after its answer.
"""

from __future__ import annotations

from dataclasses import dataclass


class CostModel:
    """``seconds(n) ~= fixed_s + per_row_s * n``, refitted after every batch."""

    def __init__(self, *, decay: float = 0.98, fixed_s: float = 1e-4, per_row_s: float = 1e-6):
        self._decay = decay
        # Weighted sums of 1, n, n^2, t, n*t, seeded with two pseudo-observations of the prior.
        self._w = self._n = self._nn = self._t = self._nt = 0.0
        self.fixed_s = fixed_s
        self.per_row_s = per_row_s
        for n in (1, 64):  # a light prior: real batches outweigh it at once
            self.observe(n, fixed_s + per_row_s * n, weight=0.01)

    def observe(self, rows: int, seconds: float, *, weight: float = 1.0) -> None:
        d = self._decay
        self._w = self._w * d + weight
        self._n = self._n * d + weight * rows
        self._nn = self._nn * d + weight * rows * rows
        self._t = self._t * d + weight * seconds
        self._nt = self._nt * d + weight * rows * seconds
        var = self._w * self._nn - self._n * self._n
        if var <= 1e-9 * max(1.0, self._w * self._nn):  # one batch size only: keep the slope
            self.fixed_s = max(0.0, (self._t - self.per_row_s * self._n) / self._w)
            return
        slope = (self._w * self._nt - self._n * self._t) / var
        slope = max(0.0, slope)
        self.per_row_s = slope
        self.fixed_s = max(0.0, (self._t - slope * self._n) / self._w)

    def seconds(self, rows: int) -> float:
        return self.fixed_s + self.per_row_s * rows


@dataclass(frozen=True)
class WaitInputs:
    """What an executor knows when it has taken a batch and could wait for more."""

    queued_rows: int
    """Rows in the batch it holds."""
    max_batch_rows: int
    arrival_requests_per_s: float
    """Recent arrival rate of requests for this model."""
    rows_per_request: float
    """Their recent mean size."""
    idle_executors: int
    """Other executors with nothing to do."""
    incoming_requests: int | None
    """Requests for this model received but not yet queued (None: unknown)."""
    slack_s: float | None
    """Time until the batch's earliest deadline (None: no deadline)."""
    max_wait_s: float


def wait_seconds(cost: CostModel, inputs: WaitInputs) -> float:
    """How long to wait for more rows before running (0: run now)."""
    if inputs.max_wait_s <= 0 or inputs.idle_executors > 0:
        return 0.0
    if inputs.queued_rows >= inputs.max_batch_rows:
        return 0.0
    expected = inputs.arrival_requests_per_s * cost.fixed_s
    if inputs.incoming_requests is not None:
        expected = min(expected, inputs.incoming_requests)
    if expected <= 1.0:
        return 0.0  # fewer than one request expected while a batch's fixed cost is spent
    rows_per_s = inputs.arrival_requests_per_s * max(inputs.rows_per_request, 1.0)
    room = inputs.max_batch_rows - inputs.queued_rows
    wait = min(inputs.max_wait_s, cost.fixed_s, room / rows_per_s)
    if inputs.slack_s is not None:
        expected = inputs.queued_rows + int(rows_per_s * wait)
        wait = min(wait, inputs.slack_s - cost.seconds(min(expected, inputs.max_batch_rows)))
    return max(0.0, wait)
