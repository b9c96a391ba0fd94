"""The network: patches of a multichannel series -> linear embedding -> transformer, with a mask."""

from __future__ import annotations

import torch
from torch import nn


def patch_count(samples, patch: int):
    """Encoder positions for a series of ``samples`` steps: one per (last partial) patch.

    Works on an ``int`` (the data side counting tokens) and on a tensor of lengths (the encoder
    sizing its mask): one function, so the two cannot drift.
    """
    return (samples + patch - 1) // patch


class PatchEncoder(nn.Module):
    """``values [N, C, T]`` + ``lengths [N]`` -> ``(features [N, L, width], mask [N, L])``.

    Each patch of ``patch`` samples (all channels) is one position (a stride-``patch`` conv),
    plus a learned position embedding; padded positions are masked out of attention, so an item
    encodes the same alone or in a padded batch (padding samples are zeros in both).
    """

    def __init__(self, channels: int = 3, patch: int = 8, width: int = 64, depth: int = 2, heads: int = 4, max_patches: int = 256, dropout: float = 0.0):
        super().__init__()
        self.out_dim, self.patch = width, patch
        self.embed = nn.Conv1d(channels, width, kernel_size=patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(max_patches, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = patch_count(values.shape[-1], self.patch)
        x = nn.functional.pad(values, (0, positions * self.patch - values.shape[-1]))
        x = self.embed(x).transpose(1, 2) + self.pos[:positions]  # [N, L, width]
        mask = torch.arange(positions, device=x.device) < patch_count(lengths.to(x.device), self.patch)[:, None]
        x = self.norm(self.blocks(x, src_key_padding_mask=~mask))
        return x * mask.unsqueeze(-1).to(x.dtype), mask
