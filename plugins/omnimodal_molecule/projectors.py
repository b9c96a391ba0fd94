"""``graph_pool`` projector: one pseudo-token per molecule (masked pooling over atoms, then MLP)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omnimodal.errors import ConfigError
from omnimodal.projectors import masked_mean_max

POOLINGS = ("mean", "sum", "mean_max")


class GraphPoolProjector(nn.Module):
    """Pool the atoms of each molecule (``mean``, ``sum`` or ``mean_max``) -> Linear-GELU-Linear.

    Always gives exactly one token, whatever the atom count; padded atoms never contribute.
    """

    def __init__(self, in_dim: int, out_dim: int, pooling: str = "mean", hidden_dim: int | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"graph_pool projector: pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        width = in_dim * (2 if pooling == "mean_max" else 1)
        hidden = hidden_dim or out_dim
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    @staticmethod
    def num_tokens(length: int, **_: Any) -> int:
        """One token per molecule."""
        return 1

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pooling == "mean_max":
            pooled = masked_mean_max(features, mask)
        else:
            w = mask.unsqueeze(-1).to(features.dtype)
            pooled = (features * w).sum(1)
            if self.pooling == "mean":
                pooled = pooled / w.sum(1).clamp(min=1.0)
        tokens = self.mlp(pooled).unsqueeze(1)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
