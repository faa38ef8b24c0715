"""The sequence transformer: an entity's recent events and its scalar features, one encoder.

Tokens: a [CLS] token, one token per scalar feature (the FT-Transformer's tokenizer), and
one token per event slot of each sequence — the event's numeric fields through a linear
map, plus its categorical fields' embeddings, plus the slot's learned position embedding
(with left padding, slot N-1 is always the newest event, so a position is "how recent"),
plus the sequence's own embedding. Pre-norm transformer blocks (``models.Block``) attend
with a key mask: padding slots are never attended to, while [CLS] and the scalar tokens
always are, so an entity without any events still has keys to attend to and stays finite
(no all-masked softmax, hence no NaN). The head reads [CLS]: padding slots cannot reach it,
so what sits in them never changes the output.

``forward(numeric, categorical, values_1, codes_1, mask_1, ..., values_k, codes_k, mask_k)``
— the arrays ``libs.preprocessing`` encodes, in the order of the spec's sequences.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from services.trainer.training.models import (
    Block,
    FeatureTokenizer,
    ModelInputs,
    SequenceInputs,
)


class EventTokenizer(nn.Module):
    """One d_token vector per slot: linear(numbers) + sum of category rows + position."""

    def __init__(self, sequence: SequenceInputs, d_token: int, index: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(d_token)
        self.index = index
        self.values = nn.Linear(sequence.n_numeric, d_token) if sequence.n_numeric else None
        cards = sequence.cardinalities
        # Only parameters that every step uses (DDP waits for a gradient of each one).
        self.categories = nn.Embedding(sum(cards), d_token) if cards else None
        if self.categories is not None:
            nn.init.uniform_(self.categories.weight, -bound, bound)
        offsets = torch.tensor([0, *cards[:-1]], dtype=torch.long).cumsum(0) if cards else None
        self.register_buffer("offsets", offsets if offsets is not None else torch.zeros(0))
        self.position = nn.Parameter(torch.empty(sequence.max_length, d_token))
        self.kind = nn.Parameter(torch.empty(d_token))
        for parameter in (self.position, self.kind):
            nn.init.uniform_(parameter, -bound, bound)

    def forward(self, values: Tensor, codes: Tensor) -> Tensor:
        x = self.position + self.kind  # [N, d]
        if self.values is not None:
            x = x + self.values(values)  # [batch, N, d]
        if self.categories is not None:
            x = x + self.categories(codes + self.offsets).sum(dim=2)
        if x.dim() == 2:  # no fields at all: only when the event is there matters
            x = x.expand(values.shape[0], -1, -1)
        return x


class SequenceTransformer(nn.Module):
    """[CLS] + scalar feature tokens + event tokens, pre-norm blocks with a key mask."""

    def __init__(
        self,
        inputs: ModelInputs,
        d_token: int,
        n_blocks: int,
        n_heads: int,
        ffn_factor: float,
        attention_dropout: float,
        ffn_dropout: float,
        residual_dropout: float,
    ) -> None:
        super().__init__()
        if not inputs.sequences:
            raise ValueError("the sequence transformer needs at least one sequence input")
        self.n_scalar = inputs.n_numeric + len(inputs.cardinalities)
        self.tokenizer = FeatureTokenizer(inputs, d_token) if self.n_scalar else None
        self.events = nn.ModuleList(
            EventTokenizer(s, d_token, i) for i, s in enumerate(inputs.sequences)
        )
        self.cls = nn.Parameter(torch.empty(1, 1, d_token))
        nn.init.uniform_(self.cls, -1 / math.sqrt(d_token), 1 / math.sqrt(d_token))
        self.blocks = nn.ModuleList(
            Block(d_token, n_heads, ffn_factor, attention_dropout, ffn_dropout, residual_dropout)
            for _ in range(n_blocks)
        )
        self.head_norm = nn.LayerNorm(d_token)
        self.head = nn.Linear(d_token, 1)

    def forward(self, numeric: Tensor, categorical: Tensor, *sequences: Tensor) -> Tensor:
        if len(sequences) != 3 * len(self.events):
            raise ValueError(
                f"expected (values, codes, mask) for {len(self.events)} sequences, "
                f"got {len(sequences)} tensors"
            )
        first_mask = sequences[2]
        tokens = [self.cls.expand(first_mask.shape[0], -1, -1)]
        if self.tokenizer is not None:
            tokens.append(self.tokenizer(numeric, categorical))
        # [CLS] and the scalar tokens are always there: every row keeps some key.
        keep = [torch.ones_like(first_mask[:, :1]).expand(-1, 1 + self.n_scalar)]
        for i, events in enumerate(self.events):
            values, codes, mask = sequences[3 * i : 3 * i + 3]
            tokens.append(events(values, codes))
            keep.append(mask)
        x = torch.cat(tokens, dim=1)
        kept = torch.cat(keep, dim=1)
        for block in self.blocks:
            x = block(x, kept)
        return self.head(torch.relu(self.head_norm(x[:, 0]))).squeeze(-1)


def build_sequence_transformer(
    inputs: ModelInputs,
    *,
    d_token: int,
    n_blocks: int,
    n_heads: int,
    ffn_factor: float,
    attention_dropout: float,
    ffn_dropout: float,
    residual_dropout: float,
) -> nn.Module:
    return SequenceTransformer(
        inputs,
        d_token,
        n_blocks,
        n_heads,
        ffn_factor,
        attention_dropout,
        ffn_dropout,
        residual_dropout,
    )
