"""The video encoder: a vision tower on every sampled frame, then spatial and temporal pooling.

``[N, T, 3, S, S]`` frames (and a ``[N, T]`` frame mask) -> the tower, at most
``max_frames_per_call`` frames per call -> each frame's ``g x g`` patch grid average-pooled with
stride ``spatial_pool`` -> groups of ``temporal_pool`` consecutive frames averaged ->
``[N, ceil(T / temporal_pool) * ceil(g / spatial_pool) ** 2, d]`` features and mask.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from omnimodal.errors import ConfigError


def pooled_tokens(frames: int, grid: int, spatial_pool: int, temporal_pool: int) -> int:
    """Encoder positions of a clip of ``frames`` sampled frames: the one formula both the data
    side (token counts before decoding) and :class:`VideoEncoder` use."""
    side = math.ceil(grid / spatial_pool)
    return math.ceil(frames / temporal_pool) * side * side


class VideoEncoder(nn.Module):
    """Wraps a frame encoder (``forward(pixel_values) -> (features [F, g*g, d], mask)``)."""

    def __init__(self, tower: nn.Module, grid: int, spatial_pool: int = 2, temporal_pool: int = 1, max_frames_per_call: int = 64):
        super().__init__()
        for key, value in (("spatial_pool", spatial_pool), ("temporal_pool", temporal_pool), ("max_frames_per_call", max_frames_per_call)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"video.{key} must be a positive integer, got {value!r}")
        self.tower = tower
        self.grid = grid
        self.spatial_pool = spatial_pool
        self.temporal_pool = temporal_pool
        self.max_frames_per_call = max_frames_per_call
        self.out_dim = tower.out_dim

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``[F, 3, S, S]`` -> ``[F, p, d]`` pooled patch features, in chunks of ``max_frames_per_call``."""
        out = []
        for chunk in frames.split(self.max_frames_per_call):
            features, _ = self.tower(chunk)
            f, length, d = features.shape
            if length != self.grid * self.grid:
                raise ConfigError(f"video encoder: the tower gave {length} positions per frame, expected a {self.grid}x{self.grid} patch grid (use features: patch)")
            grid = features.transpose(1, 2).reshape(f, d, self.grid, self.grid)
            if self.spatial_pool > 1:
                grid = nn.functional.avg_pool2d(grid, self.spatial_pool, ceil_mode=True)
            out.append(grid.flatten(2).transpose(1, 2))
        return torch.cat(out)

    def forward(self, pixel_values: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t = frame_mask.shape
        pooled = self.encode_frames(pixel_values[frame_mask])  # only real frames reach the tower
        p, d = pooled.shape[1:]
        per_frame = pooled.new_zeros(n, t, p, d)
        per_frame[frame_mask] = pooled
        s = self.temporal_pool
        groups = math.ceil(t / s)
        if groups * s != t:
            per_frame = nn.functional.pad(per_frame, (0, 0, 0, 0, 0, groups * s - t))
            frame_mask = nn.functional.pad(frame_mask, (0, groups * s - t), value=False)
        weight = frame_mask.view(n, groups, s, 1, 1).to(per_frame.dtype)
        summed = (per_frame.view(n, groups, s, p, d) * weight).sum(2)
        counts = weight.sum(2)
        features = (summed / counts.clamp(min=1)).reshape(n, groups * p, d)
        mask = (counts.view(n, groups, 1) > 0).expand(n, groups, p).reshape(n, groups * p)
        return features, mask
