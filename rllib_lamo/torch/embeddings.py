"""Token embeddings and the action head of LaMo (paper, Sec. 4 and appendix F).

LaMo replaces the Decision Transformer's linear projections by small MLPs: the paper's
ablation shows the deeper embeddings matter when the backbone is a pre-trained LM, whose
hidden space is far from raw observations. ``embedding="linear"`` gives the DT-style ablation.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualMLPEmbedding(nn.Module):
    """Linear(d, H) -> GELU -> Linear(H, H), plus a residual from the first layer's output."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.input_layer = nn.Linear(in_dim, hidden)
        self.output_layer = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.input_layer(x)
        return projected + self.output_layer(nn.functional.gelu(projected))


def build_token_embedding(kind: str, in_dim: int, hidden: int) -> nn.Module:
    """Embedding of one token type (return, state or action) into the LM's hidden size."""
    if kind == "mlp":
        return ResidualMLPEmbedding(in_dim, hidden)
    if kind == "linear":
        return nn.Linear(in_dim, hidden)
    raise ValueError(f"Unknown embedding kind {kind!r}; expected 'mlp' or 'linear'.")


def build_action_head(kind: str, hidden: int, out_dim: int, *, squash: bool) -> nn.Sequential:
    """Predicts actions from a state token's hidden state.

    ``squash`` appends a tanh: continuous actions are kept in [-1, 1] by the data pipeline, so
    the bounded output matches the targets and the env runner's action un-squashing.
    Discrete heads return raw logits.
    """
    if kind == "mlp":
        layers: list[nn.Module] = [nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim)]
    elif kind == "linear":
        layers = [nn.Linear(hidden, out_dim)]
    else:
        raise ValueError(f"Unknown embedding kind {kind!r}; expected 'mlp' or 'linear'.")
    if squash:
        layers.append(nn.Tanh())
    return nn.Sequential(*layers)
