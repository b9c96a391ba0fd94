"""Time series: a .npy/.csv path or inline values -> [channels, samples] float32 -> patches."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from omnimodal.errors import ConfigError, DataError, MediaError
from omnimodal.modality import Modality

from .encoder import PatchEncoder, patch_count
from .readers import bad, read_file


class TimeSeries(Modality):
    """Items: a path (.npy ``[channels, samples]``; .csv one row per sample, one column per
    channel, optional header), ``{"values": [[...], ...], "rate": Hz}``, or an array / nested list."""

    def __init__(self, spec, cfg):
        super().__init__(spec, cfg)
        for key in ("channels", "max_samples"):
            if not isinstance(self.cfg.get(key), int) or self.cfg[key] < 1:
                raise ConfigError(f"timeseries.{key} must be a positive integer, got {self.cfg.get(key)!r}")

    def item_from_part(self, part, base_dir):
        if "values" in part:
            return {"values": part["values"], "rate": part.get("rate")}
        return super().item_from_part(part, base_dir)

    def item_from_api_part(self, part):
        if "values" not in part:
            raise DataError(f"an API 'timeseries' part takes 'values' (and 'rate'), got keys {sorted(part)}")
        return self.item_from_part(part, None)

    def cli_part(self, value):
        if value.lstrip().startswith("["):  # --timeseries '[[0, 1, 2], [3, 4, 5]]'
            return {"type": self.part_type, "values": json.loads(value)}
        return super().cli_part(value)

    def load(self, raw, source):
        rate = raw.get("rate") if isinstance(raw, dict) else None
        if isinstance(raw, dict):
            raw = raw["values"] if "values" in raw else bad(source, f"a time series dict needs 'values', got keys {sorted(raw)}")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0):
            bad(source, f"rate must be a positive number of samples per second, got {rate!r}")
        if isinstance(raw, (str, Path)):
            raw = read_file(Path(raw), source)
        try:
            arr = np.atleast_2d(np.asarray(raw, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise MediaError(f"{source}: a time series must be a rectangular array of numbers ({exc})") from exc
        if arr.ndim != 2 or arr.shape[1] == 0 or arr.shape[0] > self.cfg["channels"]:
            raise MediaError(f"{source}: a time series must be [channels <= {self.cfg['channels']}, samples >= 1], got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise MediaError(f"{source}: the time series holds NaN or infinite values")
        if self.cfg.get("rate") and rate and rate != self.cfg["rate"]:  # linear resampling
            t = np.arange(round(arr.shape[1] * self.cfg["rate"] / rate)) * rate / self.cfg["rate"]
            arr = np.stack([np.interp(t, np.arange(arr.shape[1]), ch) for ch in arr]).astype(np.float32)
        if arr.shape[1] > self.cfg["max_samples"]:
            self.count("series_cut")
            arr = arr[:, : self.cfg["max_samples"]]
        return arr

    def preprocess(self, loaded, source):
        x = torch.zeros(self.cfg["channels"], loaded.shape[1])
        x[: loaded.shape[0]] = torch.from_numpy(loaded)
        if self.cfg.get("normalize", True):
            x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True, unbiased=False) + 1e-5)
        return {"values": x}

    def encoder_length(self, features):
        return patch_count(features["values"].shape[-1], int(self.cfg["encoder"]["patch"]))

    def collate(self, items):
        lengths = torch.tensor([it["values"].shape[-1] for it in items])
        batch = torch.zeros(len(items), self.cfg["channels"], int(lengths.max()))
        for i, it in enumerate(items):
            batch[i, :, : it["values"].shape[-1]] = it["values"]
        return {"values": batch, "lengths": lengths}

    def build_encoder(self, load_weights=True):
        enc = {k: v for k, v in self.cfg["encoder"].items() if k != "kind"}
        max_patches = patch_count(self.cfg["max_samples"], int(enc.get("patch", 8)))
        return PatchEncoder(channels=self.cfg["channels"], max_patches=max_patches, **enc)

    def example_items(self, rng: random.Random, n: int):
        sizes = [(rng.randint(1, 3), rng.randint(1, 70)) for _ in range(n)]
        return [{"values": [[rng.gauss(0, 1) for _ in range(t)] for _ in range(c)], "rate": 100} for c, t in sizes]

    def bad_items(self):
        return [([[1.0, float("nan")]], "NaN"), ([[1.0, 2.0], [3.0]], "rectangular"), (np.zeros((9, 4)), "channels <= 3")]
