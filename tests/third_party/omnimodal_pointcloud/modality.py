"""Point clouds: load ``[N, 3]`` (a .npy path, an array or nested lists) -> centre -> pad -> PointNet."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from omnimodal.errors import MediaError
from omnimodal.modality import Modality


def grouped_length(points, group: int):
    """Encoder positions for ``points`` points: one per group of ``group`` (int or tensor)."""
    if isinstance(points, torch.Tensor):
        return torch.div(points + group - 1, group, rounding_mode="floor")
    return math.ceil(points / group)


class PointEncoder(nn.Module):
    """A per-point MLP, then a masked mean over consecutive groups of ``group`` points."""

    def __init__(self, width: int = 64, group: int = 4, bug: str | None = None):
        super().__init__()
        self.out_dim, self.group, self.bug = width, group, bug
        self.mlp = nn.Sequential(nn.Linear(3, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, points: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, longest, _ = points.shape
        valid = torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)
        if self.bug == "leak_padding":  # padded points count in the group means
            valid = torch.ones_like(valid)
        h = self.mlp(points) * valid.unsqueeze(-1)
        groups = grouped_length(longest, self.group)
        pad = groups * self.group - longest
        h = nn.functional.pad(h, (0, 0, 0, pad)).view(n, groups, self.group, -1)
        w = nn.functional.pad(valid, (0, pad)).view(n, groups, self.group, 1).float()
        x = h.sum(2) / w.sum(2).clamp(min=1)
        mask = torch.arange(groups).unsqueeze(0) < grouped_length(lengths, self.group).unsqueeze(1)
        return x * mask.unsqueeze(-1), mask


class PointCloud(Modality):
    def __init__(self, spec, cfg):
        super().__init__(spec, cfg)
        self.cfg.setdefault("encoder", {"kind": "pointnet", "width": 64, "group": 4})
        self.cfg.setdefault("max_points", 1024)

    def cli_part(self, value: str) -> dict[str, Any]:
        return {"type": self.part_type, "path": value}

    def item_from_api_part(self, part: dict[str, Any]) -> Any:
        body = part.get("input_points")
        if not isinstance(body, dict) or "data" not in body:
            raise MediaError("input_points part needs input_points.data ([N, 3] numbers)")
        return body["data"]

    def load(self, raw: Any, source: str) -> np.ndarray:
        if isinstance(raw, (str, Path)):
            if not Path(raw).is_file():
                raise MediaError(f"{source}: point cloud file not found: {raw}")
            raw = np.load(raw)
        if not isinstance(raw, (np.ndarray, list, tuple)):
            raise MediaError(f"{source}: cannot load a point cloud from {type(raw).__name__}")
        arr = np.asarray(raw, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
            where = "" if self.cfg.get("bug") == "anonymous_error" else f"{source}: "
            raise MediaError(f"{where}a point cloud must be [N, 3] with N >= 1, got shape {arr.shape}")
        return arr

    def preprocess(self, loaded: np.ndarray, source: str) -> dict[str, Any]:
        pts = torch.from_numpy(loaded[: int(self.cfg["max_points"])])
        return {"points": pts - pts.mean(0)}

    def encoder_length(self, features: dict[str, Any]) -> int:
        n = features["points"].shape[0]
        if self.cfg.get("bug") == "encoder_in_data_worker":  # counts by running an encoder
            enc = {k: v for k, v in self.cfg["encoder"].items() if k != "kind"}
            with torch.no_grad():
                return int(PointEncoder(**enc)(**self.collate([features]))[1].sum())
        if self.cfg.get("bug") == "length_off_by_one":
            return grouped_length(n, int(self.cfg["encoder"]["group"])) + 1
        return grouped_length(n, int(self.cfg["encoder"]["group"]))

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = torch.tensor([it["points"].shape[0] for it in items])
        batch = torch.zeros(len(items), int(lengths.max()), 3)
        for i, it in enumerate(items):
            batch[i, : it["points"].shape[0]] = it["points"]
        return {"points": batch, "lengths": lengths}

    def build_encoder(self, load_weights: bool = True):
        enc = dict(self.cfg["encoder"])
        enc.pop("kind")
        if self.cfg.get("bug") == "mutate_cfg":
            self.cfg["encoder"]["built"] = True
        return PointEncoder(bug=self.cfg.get("bug"), **enc)

    def example_items(self, rng: random.Random, n: int) -> list[Any]:
        return [[[rng.uniform(-1, 1) for _ in range(3)] for _ in range(rng.randint(1, 40))] for _ in range(n)]

    def bad_items(self) -> list[tuple[Any, str]]:
        return [(np.zeros((5, 2)), "[N, 3]"), ([], "N >= 1")]
