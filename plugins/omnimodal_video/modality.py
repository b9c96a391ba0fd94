"""Video modality: plan (metadata -> frame indices -> token count) -> decode the sampled frames ->
preprocess each frame as the vision plugin preprocesses an image -> collate with a frame mask.

Accepted raw items:

- a path (``str`` / ``Path``) or ``bytes`` of a video file (MP4, WebM, MKV, anything FFmpeg reads);
- ``{"array": frames, "fps": rate}`` or ``(frames, rate)`` with ``frames`` a ``[T, H, W, 3]``
  uint8 array or tensor (floats in [0, 1] are scaled). A bare array without its rate is refused.

The frame indices are a pure function of (frame count, fps, config) (see ``sampling.py``) and
the pseudo-token count comes from the clip's metadata before any pixel is decoded
(:meth:`VideoModality.plan`). If fewer frames decode than planned, the last decoded frame is
repeated so the placeholder count still matches; that is counted under ``frames_repeated`` and
logged.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnimodal.errors import ConfigError, MediaError
from omnimodal.modality import Modality, url_part_item
from omnimodal.specs import ModalitySpec
from omnimodal_video import decode
from omnimodal_video.encoders import VideoEncoder, pooled_tokens
from omnimodal_video.sampling import Sampling, sample_indices

log = logging.getLogger(__name__)

FRAME_KEYS = ("encoder", "image_size", "resize", "mean", "std")
_MAX_WARNINGS = 10


class VideoModality(Modality):
    """Clips for a per-frame vision tower; config keys: see ``conf/modalities/video.yaml``."""

    def __init__(self, spec, cfg):
        super().__init__(spec, cfg)
        enc = self.cfg.setdefault("encoder", {"kind": "vit", "patch_size": 8})
        if enc.get("features", "patch") != "patch":
            raise ConfigError(f"video.encoder.features must be 'patch' (each frame's patch grid is pooled), got {enc.get('features')!r}")
        self.sampling = Sampling.from_config(self.cfg)
        for key, default in (("spatial_pool", 1), ("temporal_pool", 1), ("max_frames_per_call", 64)):
            value = self.cfg.setdefault(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"video.{key} must be a positive integer, got {value!r}")
        self.backend = self.cfg.get("backend") or "pyav"
        decode.check_backend(self.backend)
        self.frames = _frame_modality(self.name, self.cfg)
        self._warnings = 0

    # ---- sharing -----------------------------------------------------------------------
    def share_from(self, owner: Modality) -> None:
        """Preprocess frames exactly as ``owner`` (a vision modality) preprocesses images."""
        from omnimodal_vision.modality import VisionModality

        if not isinstance(owner, VisionModality):
            raise ConfigError(f"video.shared_with={owner.name!r}: video can share only a vision modality's tower (frames are images to it)")
        ignored = [k for k in FRAME_KEYS if k in self.cfg and _comparable(self.cfg[k]) != _comparable(owner.cfg.get(k, self.cfg[k]))]
        if ignored:
            log.warning("video shares %s's tower: video.%s not used (%s's settings apply)", owner.name, ", video.".join(ignored), owner.name)
        self.frames = owner

    def wrap_shared_encoder(self, encoder: torch.nn.Module) -> VideoEncoder:
        """The owner's tower inside this modality's pooling (which has no parameters of its own)."""
        return self._wrap(encoder)

    # ---- planning: metadata only -------------------------------------------------------
    @property
    def grid(self) -> int:
        """Side of one frame's patch grid, from the frame encoder's own length."""
        length = self.frames.encoder_length({})
        side = math.isqrt(length)
        if side * side != length:
            raise ConfigError(f"video: the frame encoder gives {length} positions per frame, not a square patch grid (use features: patch)")
        return side

    def tokens_for(self, num_frames: int) -> int:
        """Pseudo-tokens of a clip of ``num_frames`` sampled frames."""
        return self.num_tokens(pooled_tokens(num_frames, self.grid, self.cfg["spatial_pool"], self.cfg["temporal_pool"]))

    def indices_for(self, total: int, fps: float) -> list[int]:
        """The frame indices sampled from a clip of ``total`` frames at ``fps`` (a pure function)."""
        return sample_indices(total, fps, self.sampling, self.tokens_for)

    def plan(self, raw: Any, source: str = "video") -> dict[str, Any]:
        """What a clip becomes, from its metadata alone (no pixel decoded):
        ``{"info": VideoInfo | None, "indices": [...], "num_tokens": M}``."""
        array, fps = _as_array(raw, source)
        if array is not None:
            info = None
            indices = self.indices_for(array.shape[0], fps)
        else:
            info = decode.probe_torchcodec(raw, source) if self.backend == "torchcodec" else decode.probe(raw, source)
            indices = self.indices_for(info.num_frames, info.fps)
        return {"info": info, "indices": indices, "num_tokens": self.tokens_for(len(indices))}

    # ---- data side -------------------------------------------------------------------
    def item_from_api_part(self, part: dict[str, Any]) -> Any:
        """``{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}`` -> bytes
        (an http(s) URL is returned as is: the server fetches it only with --allow-remote-media)."""
        if part.get("type") != "video_url":
            return super().item_from_api_part(part)
        return url_part_item(part, "video_url")

    def load(self, raw: Any, source: str) -> dict[str, Any]:
        """Plan from metadata, then decode only the sampled frames: ``{"frames": [T, H, W, 3] uint8, "indices": [...]}``."""
        array, fps = _as_array(raw, source)
        if array is not None:
            indices = self.indices_for(array.shape[0], fps)
            return {"frames": array[indices], "indices": indices}
        if self.backend == "torchcodec":
            plan = self.plan(raw, source)
            info, indices = plan["info"], plan["indices"]
            frames, decoded = decode.read_frames_torchcodec(raw, indices, source)
        else:
            with decode.Clip(raw, source) as clip:  # one open: metadata, then the sampled frames
                info = clip.info()
                indices = self.indices_for(info.num_frames, info.fps)
                frames, decoded = clip.read(indices)
        wanted = len(set(indices))
        if decoded < wanted:
            self._report_repeat(source, wanted - decoded, wanted, info)
        return {"frames": frames, "indices": indices}

    def preprocess(self, loaded: dict[str, Any], source: str) -> dict[str, Any]:
        """Each frame through the frame modality's image preprocessing: ``{"pixel_values": [T, 3, S, S], "num_frames": T}``."""
        from PIL import Image

        pixels = [self.frames.preprocess(Image.fromarray(frame), source)["pixel_values"] for frame in loaded["frames"]]
        return {"pixel_values": torch.stack(pixels), "num_frames": len(pixels)}

    def encoder_length(self, features: dict[str, Any]) -> int:
        """Encoder positions of the clip: pooled patches per frame times pooled frame groups."""
        return pooled_tokens(int(features["num_frames"]), self.grid, self.cfg["spatial_pool"], self.cfg["temporal_pool"])

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad clips to the most frames: ``{"pixel_values": [N, T, 3, S, S], "frame_mask": [N, T]}``."""
        longest = max(int(it["num_frames"]) for it in items)
        first = items[0]["pixel_values"]
        batch = first.new_zeros((len(items), longest, *first.shape[1:]))
        mask = torch.zeros(len(items), longest, dtype=torch.bool)
        for i, it in enumerate(items):
            t = int(it["num_frames"])
            batch[i, :t] = it["pixel_values"]
            mask[i, :t] = True
        return {"pixel_values": batch, "frame_mask": mask}

    # ---- model side ------------------------------------------------------------------
    def build_encoder(self, load_weights: bool = True) -> VideoEncoder:
        """A frame tower built from the vision plugin's configs (ViT, CLIP, SigLIP), inside the pooling."""
        return self._wrap(self.frames.build_encoder(load_weights=load_weights))

    def _wrap(self, tower: torch.nn.Module) -> VideoEncoder:
        return VideoEncoder(tower, self.grid, self.cfg["spatial_pool"], self.cfg["temporal_pool"], self.cfg["max_frames_per_call"])

    def save_assets(self, directory: Path) -> None:
        """Save a pretrained tower's image processor (unless the tower is shared: its owner saves it)."""
        if not self.cfg.get("shared_with"):
            self.frames.save_assets(directory)

    def load_assets(self, directory: Path) -> None:
        """Load what :meth:`save_assets` wrote."""
        if not self.cfg.get("shared_with"):
            self.frames.load_assets(directory)

    # ---- contract examples (omnimodal.testing) ----------------------------------------
    def example_items(self, rng, n: int) -> list[Any]:
        """Clips from 1 to 40 frames at several sizes and frame rates (arrays with their fps)."""
        gen = np.random.default_rng(rng.randrange(2**32))
        items: list[Any] = []
        for i in range(n):
            frames = [1, 3, 8, 20, 40][i % 5] if i < 5 else rng.randint(1, 40)
            h, w = rng.choice([(16, 16), (24, 32), (32, 48)])
            clip = gen.integers(0, 256, (frames, h, w, 3), dtype=np.uint8)
            items.append({"array": clip, "fps": rng.choice([4.0, 8.0, 30.0])})
        return items

    def bad_items(self) -> list[tuple[Any, str]]:
        return [
            (b"\x00\x01 this is not a video", "not a readable video"),
            ({"array": np.zeros((0, 16, 16, 3), np.uint8), "fps": 8.0}, "zero frames"),
            ({"array": np.zeros((4, 16, 16, 3), np.uint8), "fps": 0}, "fps"),
        ]

    def _report_repeat(self, source: str, missing: int, wanted: int, info) -> None:
        self.count("frames_repeated", missing)
        self._warnings += 1
        if self._warnings <= _MAX_WARNINGS:
            more = " (further cases are counted under 'frames_repeated', not logged)" if self._warnings == _MAX_WARNINGS else ""
            log.warning("%s: %d of %d sampled frames did not decode (metadata said %s frames); the last decoded frame is repeated%s",
                        source, missing, wanted, info.num_frames if info else "?", more)


def _frame_modality(name: str, cfg: dict[str, Any]):
    """A vision modality that preprocesses frames and builds the tower from the video config."""
    from omnimodal_vision.modality import VisionModality

    spec = ModalitySpec(name=f"{name}.frames", part_type="image", placeholder="<image>", impl="omnimodal_vision.modality:VisionModality")
    frames = VisionModality(spec, {k: cfg[k] for k in FRAME_KEYS if k in cfg})
    frames.cfg["encoder"] = cfg["encoder"]  # one dict: what the tower records (hf_config) is saved with the video config
    return frames


def _comparable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if not k.startswith("_") and k != "hf_config"}
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return value


def _as_array(raw: Any, source: str) -> tuple[np.ndarray | None, float]:
    """``({"array": frames, "fps": r} | (frames, r))`` -> (``[T, H, W, 3]`` uint8, r); files -> (None, 0)."""
    if isinstance(raw, (str, Path, bytes, bytearray, memoryview)):
        return None, 0.0
    if isinstance(raw, dict):
        if "array" not in raw or "fps" not in raw:
            raise MediaError(f"{source}: a video dict needs 'array' ([T, H, W, 3] frames) and 'fps' (got keys {sorted(raw)})")
        array, fps = raw["array"], raw["fps"]
    elif isinstance(raw, tuple) and len(raw) == 2:
        array, fps = raw
    elif isinstance(raw, (np.ndarray, torch.Tensor, list)):
        raise MediaError(f"{source}: a video array needs its frame rate: pass {{'array': frames, 'fps': rate}} or (frames, rate)")
    else:
        raise MediaError(f"{source}: cannot load a video from {type(raw).__name__}")
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise MediaError(f"{source}: video array must be [T, H, W, 3] (RGB frames), got shape {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise MediaError(f"{source}: the video has zero frames")
    if 0 in array.shape[1:3]:
        raise MediaError(f"{source}: video frames have zero size {tuple(array.shape[1:3])}")
    if array.dtype != np.uint8:
        if array.dtype.kind != "f" or not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise MediaError(f"{source}: video arrays must be uint8, or floats in [0, 1] (got {array.dtype})")
        array = (array * 255).round().astype(np.uint8)
    try:
        rate = float(fps)
    except (TypeError, ValueError):
        rate = float("nan")
    if isinstance(fps, bool) or not math.isfinite(rate) or rate <= 0:
        raise MediaError(f"{source}: video fps must be a positive number, got {fps!r}")
    return array, rate
