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


class NatureCNNEncoder(nn.Module):
    """The Decision Transformer's Atari state encoder (the Nature-DQN torso) to the LM's width.

    Conv(C, 32, 8, stride 4) -> ReLU -> Conv(32, 64, 4, stride 2) -> ReLU -> Conv(64, 64, 3)
    -> ReLU -> Linear(-> hidden) -> Tanh, on [N, C, H, W] stacks of frames (3136 features
    before the linear layer for 84x84 frames).
    """

    def __init__(self, channels: int, height: int, width: int, hidden: int):
        super().__init__()
        self.convolutions = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            features = self.convolutions(torch.zeros(1, channels, height, width)).shape[1]
        self.projection = nn.Sequential(nn.Linear(features, hidden), nn.Tanh())

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.projection(self.convolutions(frames))


def build_token_embedding(kind: str, in_dim: int, hidden: int) -> nn.Module:
    """Embedding of one token type (return, state or action) into the LM's hidden size."""
    if kind == "mlp":
        return ResidualMLPEmbedding(in_dim, hidden)
    if kind == "linear":
        return nn.Linear(in_dim, hidden)
    raise ValueError(f"Unknown embedding kind {kind!r}; expected 'mlp' or 'linear'.")


def build_action_head(kind: str, hidden: int, out_dim: int, *, continuous: bool) -> nn.Sequential:
    """Predicts actions from a state token's hidden state.

    As in the paper's code: the linear head is DT's Linear + tanh for continuous actions (the
    data keep them in [-1, 1]); the MLP head, Linear -> GELU -> Linear, has no tanh, so its
    output is unbounded and the env runner clips it to the action space (``clip_actions``).
    Discrete heads return raw logits.
    """
    if kind == "mlp":
        return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    if kind == "linear":
        layers: list[nn.Module] = [nn.Linear(hidden, out_dim)]
        if continuous:
            layers.append(nn.Tanh())
        return nn.Sequential(*layers)
    raise ValueError(f"Unknown embedding kind {kind!r}; expected 'mlp' or 'linear'.")
