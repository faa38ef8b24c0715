"""The built-in model families: an MLP and an FT-Transformer, for tabular features.

Both take ``forward(numeric, categorical)``: float32 [batch, numeric features] (already
filled and normalised by libs/preprocessing) and int64 [batch, categorical features]
(0 = missing or unseen), and return logits [batch]. Attention is written out (matmul,
softmax, matmul) rather than through a fused kernel, so it exports to plain ONNX ops at
opset 17 and runs deterministically; it takes an optional key mask (the sequence
transformer's padding, ``sequence_model.py``). Families that read sequences take
``forward(numeric, categorical, *per sequence (values, codes, mask))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from libs.preprocessing import PreprocessingSpec


@dataclass(frozen=True)
class SequenceInputs:
    """What one sequence input looks like (from its fitted ``SequenceFeature``)."""

    name: str
    max_length: int
    """N: slots per row."""
    n_numeric: int
    """Numeric fields per event (``values``' last axis)."""
    cardinalities: tuple[int, ...]
    """Embedding rows per categorical field (vocabulary + the missing/unseen index)."""


@dataclass(frozen=True)
class ModelInputs:
    """What a model's inputs look like (from the fitted preprocessing)."""

    n_numeric: int
    cardinalities: tuple[int, ...]
    """Embedding rows per categorical feature (vocabulary + the missing/unseen index)."""
    sequences: tuple[SequenceInputs, ...] = ()
    """Event sequences, in the order of the model's sequence arguments."""

    @classmethod
    def of(cls, spec: PreprocessingSpec) -> ModelInputs:
        """The inputs a model trained on ``spec``'s encoding takes."""
        return cls(
            len(spec.numeric),
            tuple(c.cardinality for c in spec.categorical),
            tuple(
                SequenceInputs(
                    s.name,
                    s.max_length,
                    len(s.numeric),
                    tuple(c.cardinality for c in s.categorical),
                )
                for s in spec.sequences
            ),
        )


class MLP(nn.Module):
    """Category embeddings concatenated to the numbers, Linear-ReLU-Dropout blocks, a head."""

    def __init__(
        self, inputs: ModelInputs, d_hidden: int, n_layers: int, dropout: float, d_embedding: int
    ) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(c, d_embedding) for c in inputs.cardinalities)
        width = inputs.n_numeric + d_embedding * len(inputs.cardinalities)
        layers: list[nn.Module] = []
        for _ in range(n_layers):
            layers += [nn.Linear(width, d_hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = d_hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        parts = [numeric] + [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.head(self.body(torch.cat(parts, dim=1))).squeeze(-1)


class FeatureTokenizer(nn.Module):
    """One d_token vector per feature: x_j * w_j + b_j for numbers, a table row for categories.

    Only the parameters some feature uses are created: DDP waits for a gradient of every
    parameter, so an unused one (e.g. category tables without categorical features) fails
    a multi-process job at its second step.
    """

    def __init__(self, inputs: ModelInputs, d_token: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(d_token)
        self.n_numeric = inputs.n_numeric
        self.n_categorical = len(inputs.cardinalities)
        self.numeric_weight: nn.Parameter | None = None
        self.numeric_bias: nn.Parameter | None = None
        if self.n_numeric:
            self.numeric_weight = nn.Parameter(torch.empty(inputs.n_numeric, d_token))
            self.numeric_bias = nn.Parameter(torch.empty(inputs.n_numeric, d_token))
            for parameter in (self.numeric_weight, self.numeric_bias):
                nn.init.uniform_(parameter, -bound, bound)
        cards = inputs.cardinalities
        self.categorical: nn.Embedding | None = None
        self.categorical_bias: nn.Parameter | None = None
        if cards:
            self.categorical = nn.Embedding(sum(cards), d_token)
            nn.init.uniform_(self.categorical.weight, -bound, bound)
            self.categorical_bias = nn.Parameter(torch.empty(len(cards), d_token))
            nn.init.uniform_(self.categorical_bias, -bound, bound)
        offsets = torch.tensor([0, *cards[:-1]], dtype=torch.long).cumsum(0) if cards else None
        self.register_buffer("offsets", offsets if offsets is not None else torch.zeros(0))

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        tokens = []
        if self.numeric_weight is not None and self.numeric_bias is not None:
            tokens.append(numeric.unsqueeze(-1) * self.numeric_weight + self.numeric_bias)
        if self.categorical is not None and self.categorical_bias is not None:
            tokens.append(self.categorical(categorical + self.offsets) + self.categorical_bias)
        return torch.cat(tokens, dim=1)


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d % n_heads:
            raise ValueError(f"d_token ({d}) must be a multiple of n_heads ({n_heads})")
        self.n_heads, self.d_head = n_heads, d // n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """``keep``: bool [batch, tokens], False for keys no token may attend to (padding);
        every row must keep at least one key (the sequence model's [CLS] always is)."""
        batch, tokens, d = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.n_heads, self.d_head).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, heads, tokens, d_head]
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)
        if keep is not None:
            # The lowest finite float, not -inf: exp(min - max) is exactly 0, so a masked
            # key's value has no effect at all, and a (never built) all-masked row would
            # average instead of turning into NaN.
            scores = scores.masked_fill(~keep[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        mixed = self.dropout(weights) @ v
        return self.out(mixed.transpose(1, 2).reshape(batch, tokens, d))


class Block(nn.Module):
    """Pre-norm: x + Attention(LN(x)), then x + ReGLU-FFN(LN(x))."""

    def __init__(
        self,
        d: int,
        n_heads: int,
        ffn_factor: float,
        attn_drop: float,
        ffn_drop: float,
        res_drop: float,
    ) -> None:
        super().__init__()
        hidden = max(1, int(d * ffn_factor))
        self.attention_norm = nn.LayerNorm(d)
        self.attention = SelfAttention(d, n_heads, attn_drop)
        self.ffn_norm = nn.LayerNorm(d)
        self.ffn_in = nn.Linear(d, 2 * hidden)
        self.ffn_out = nn.Linear(hidden, d)
        self.ffn_dropout = nn.Dropout(ffn_drop)
        self.residual_dropout = nn.Dropout(res_drop)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        x = x + self.residual_dropout(self.attention(self.attention_norm(x), keep))
        a, b = self.ffn_in(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + self.residual_dropout(self.ffn_out(self.ffn_dropout(a * torch.relu(b))))


class FTTransformer(nn.Module):
    """FT-Transformer (Gorishniy et al., 2021): tokens, [CLS], pre-norm blocks, head on [CLS]."""

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
        self.tokenizer = FeatureTokenizer(inputs, d_token)
        self.cls = nn.Parameter(torch.empty(1, 1, d_token))
        nn.init.uniform_(self.cls, -1 / math.sqrt(d_token), 1 / math.sqrt(d_token))
        self.blocks = nn.ModuleList(
            Block(d_token, n_heads, ffn_factor, attention_dropout, ffn_dropout, residual_dropout)
            for _ in range(n_blocks)
        )
        self.head_norm = nn.LayerNorm(d_token)
        self.head = nn.Linear(d_token, 1)

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        tokens = self.tokenizer(numeric, categorical)
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(torch.relu(self.head_norm(x[:, 0]))).squeeze(-1)


def build_mlp(
    inputs: ModelInputs, *, d_hidden: int, n_layers: int, dropout: float, d_embedding: int
) -> nn.Module:
    return MLP(inputs, d_hidden, n_layers, dropout, d_embedding)


def build_ft_transformer(
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
    return FTTransformer(
        inputs,
        d_token,
        n_blocks,
        n_heads,
        ffn_factor,
        attention_dropout,
        ffn_dropout,
        residual_dropout,
    )


def build(family_name: str, inputs: ModelInputs, hyperparameters: dict[str, object]) -> nn.Module:
    """The family's model, from its registered ``module:function`` builder."""
    import importlib

    from services.trainer.domain.families import family

    chosen = family(family_name)
    if inputs.sequences and not chosen.reads_sequences:
        raise ValueError(
            f"model family {family_name!r} does not read sequence inputs "
            f"({[s.name for s in inputs.sequences]}); use sequence_transformer"
        )
    module_name, function = chosen.builder.split(":")
    builder = getattr(importlib.import_module(module_name), function)
    return builder(inputs, **hyperparameters)  # type: ignore[no-any-return]
