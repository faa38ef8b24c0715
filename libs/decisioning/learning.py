"""Off-policy learning: one reward network for all actions, and act greedily on it.

The policy scores each action by its predicted expected reward ``q̂(x, a)`` and acts by the
spec's exploration on those scores (greedy with an ε or a softmax floor, so later logs
keep exploring). The network is fitted by least squares to the logged rewards of the
actions taken (``target="dm"``): given the context the logged action was drawn at random
with a known, positive propensity, so there is no confounding to correct and every
exploration row teaches its action. Each action enters the network as its one-hot plus
its standardised ``attributes`` (spec), so actions share what they learn, and training
stops early on a held-back part of the training logs (heavy-tailed credit rewards
overfit in a few epochs otherwise).

``target="dr"`` regresses every eligible action on its doubly robust pseudo-reward
``Γ_i(a) = q̂(x_i, a) + 1{a = a_i} (r_i - q̂(x_i, a_i)) / p_i`` (cross-fitted q̂) instead:
unbiased for q whatever q̂ is, but its 1/p-amplified noise made the learned policies
worse on the simulator (50,000 logs: true value 0.027 vs 0.029 for ``dm``, optimum
0.031; ADR 0020). IPS-weighted classification (POEM, outcome-weighted learning) was not
chosen: with few actions and a mostly greedy logger its weights are large and its loss
non-convex in the policy. Whatever the method, the learned policy is judged by DR on logs
it never saw (``opl.py``), which is what catches a biased reward model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from libs.decisioning.logs import LoggedDecisions
from libs.decisioning.reward_model import RewardModelConfig, cross_fit
from libs.decisioning.spec import PolicySpec

TARGETS = ("dr", "dm")


@dataclass(frozen=True)
class LearningConfig:
    """How the reward network is trained."""

    target: str = "dm"
    """``dm``: the logged reward of the action taken; ``dr``: every eligible action's DR
    pseudo-reward."""
    hidden: int = 32
    """Width of the trunk and the action head."""
    embedding: int = 4
    """Width of each categorical feature's embedding."""
    max_epochs: int = 50
    """At most this many passes over the training logs."""
    validation_fraction: float = 0.2
    """Share of the training logs held back for early stopping (same loss as training)."""
    patience: int = 3
    """Stop after this many epochs without a better validation loss; keep the best."""
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    """Initialisation, batch order, and the pseudo-rewards' folds."""
    threads: int = 1
    """torch intra-op threads."""
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """The cross-fitted q̂ in the pseudo-rewards (``dr``)."""

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.max_epochs < 1 or self.batch_size < 1 or self.hidden < 1:
            raise ValueError("max_epochs, batch_size and hidden must be >= 1")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )


class RewardNetwork(nn.Module):
    """``(numeric [B, n], categorical [B, c]) -> expected reward [B, actions]``."""

    def __init__(
        self, n_numeric: int, cardinalities: Sequence[int], actions: Tensor, hidden: int,
        embedding: int, reward_shift: float, reward_scale: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding) for c in cardinalities)
        width = n_numeric + embedding * len(cardinalities)
        self.trunk = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.register_buffer("actions", actions)
        self.head = nn.Sequential(
            nn.Linear(hidden + actions.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        self.register_buffer("shift", torch.tensor(reward_shift, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(reward_scale, dtype=torch.float32))

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        parts = [numeric] + [e(categorical[:, j]) for j, e in enumerate(self.embeddings)]
        h = self.trunk(torch.cat(parts, dim=1))
        batch, count = h.shape[0], self.actions.shape[0]
        pairs = torch.cat(
            [h.unsqueeze(1).expand(batch, count, -1),
             self.actions.unsqueeze(0).expand(batch, count, -1)], dim=2,
        )  # fmt: skip
        return self.head(pairs).squeeze(2) * self.scale + self.shift


def action_inputs(spec: PolicySpec) -> Tensor:
    """Each action's input to the head: its one-hot, then its standardised attributes."""
    count = len(spec.actions)
    keys = sorted(spec.actions[0].attributes)
    attributes = np.array([[a.attributes[k] for k in keys] for a in spec.actions]).reshape(
        count, len(keys)
    )
    std = attributes.std(axis=0)
    standard = (attributes - attributes.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return torch.tensor(np.concatenate([np.eye(count), standard], axis=1), dtype=torch.float32)


def pseudo_rewards(logs: LoggedDecisions, config: RewardModelConfig) -> np.ndarray:
    """``[rows, actions]`` DR pseudo-rewards Γ (0 where ineligible)."""
    q = cross_fit(logs, config)
    rows = np.arange(logs.rows)
    gamma = q.copy()
    gamma[rows, logs.actions] += (logs.rewards - q[rows, logs.actions]) / logs.propensities
    return np.where(logs.eligible, gamma, 0.0)


def fit_reward_network(
    logs: LoggedDecisions, spec: PolicySpec, cardinalities: Sequence[int], config: LearningConfig
) -> RewardNetwork:
    """Train the network on ``logs`` (the training part only; evaluation needs other rows)."""
    if tuple(spec.action_names) != tuple(logs.action_names):
        raise ValueError(
            f"the policy's actions {list(spec.action_names)} differ from the logs' "
            f"{list(logs.action_names)}; learn with the spec the logs were decided under"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _fit(logs, spec, cardinalities, config)
    finally:
        torch.set_num_threads(threads)


def _fit(
    logs: LoggedDecisions, spec: PolicySpec, cardinalities: Sequence[int], config: LearningConfig
) -> RewardNetwork:
    torch.manual_seed(config.seed)
    if config.target == "dr":
        targets = pseudo_rewards(logs, config.reward_model)
        mask = logs.eligible.astype(np.float32)
    else:
        targets = np.zeros(logs.eligible.shape)
        targets[np.arange(logs.rows), logs.actions] = logs.rewards
        mask = np.zeros(logs.eligible.shape, dtype=np.float32)
        mask[np.arange(logs.rows), logs.actions] = 1.0
    observed = targets[mask > 0]
    shift, scale = float(observed.mean()), float(observed.std() or 1.0)
    model = RewardNetwork(
        logs.numeric.shape[1], cardinalities, action_inputs(spec), config.hidden,
        config.embedding, shift, scale,
    )  # fmt: skip
    numeric = torch.tensor(logs.numeric, dtype=torch.float32)
    categorical = torch.tensor(logs.categorical, dtype=torch.int64)
    y = torch.tensor((targets - shift) / scale, dtype=torch.float32)
    m = torch.tensor(mask * logs.weights()[:, None], dtype=torch.float32)
    order = torch.randperm(logs.rows, generator=torch.Generator().manual_seed(config.seed))
    stop = int(logs.rows * config.validation_fraction)
    valid, train = order[:stop], order[stop:]

    def loss_on(rows: Tensor) -> Tensor:
        predicted = (model(numeric[rows], categorical[rows]) - model.shift) / model.scale
        return (m[rows] * (predicted - y[rows]) ** 2).sum() / m[rows].sum().clamp(min=1.0)

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed + 1)
    best, best_state, waited = float("inf"), copy.deepcopy(model.state_dict()), 0
    for _ in range(config.max_epochs):
        model.train()
        shuffled = train[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(shuffled), config.batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss_on(shuffled[start : start + config.batch_size]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            current = float(loss_on(valid)) if len(valid) else -float("inf")
        if current < best:
            best, best_state, waited = current, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= config.patience:
                break
    model.load_state_dict(best_state)
    return model.eval()
