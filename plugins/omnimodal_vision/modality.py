"""Vision modality: load (path, bytes, PIL, array) -> preprocess (resize/pad, normalise) -> collate.

Token counts come from :mod:`omnimodal_vision.encoders` (``vit_length``, ``tower_lengths``):
the very functions the encoders use to size their output. A pretrained tower's architecture
(its HF config) is read from its path (JSON only) or, in a saved model, from
``assets/<name>/tower_config.json``; it never goes into the modality's config.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from omnimodal.errors import ConfigError, MediaError
from omnimodal.modality import Modality, url_part_item


class VisionModality(Modality):
    """Images for a ViT-style encoder; config keys: see ``conf/modalities/vision.yaml``."""

    def __init__(self, spec, cfg):
        super().__init__(spec, cfg)
        enc = self.cfg.setdefault("encoder", {"kind": "vit"})
        if enc.get("kind") not in ("vit", "hf"):
            raise ConfigError(f"vision encoder kind {enc.get('kind')!r} is unknown. Valid choices: hf, vit.")
        if self.cfg.get("resize", "squash") not in ("squash", "pad"):
            raise ConfigError(f"vision.resize must be 'squash' or 'pad', got {self.cfg.get('resize')!r}")
        self.processor = None
        self.fast_pixels = None  # the processor's PIL path redone faster, when it gives the same pixels
        self._tower: dict[str, Any] | None = None

    # ---- data side -------------------------------------------------------------------
    def item_from_api_part(self, part: dict[str, Any]) -> Any:
        if part.get("type") != "image_url":
            return super().item_from_api_part(part)
        return url_part_item(part, "image_url")

    def load(self, raw: Any, source: str) -> Image.Image:
        """Return an RGB PIL image from a path, bytes, PIL image, or HxWx3 array/tensor."""
        try:
            if isinstance(raw, Image.Image):
                image = raw
            elif isinstance(raw, (str, Path)):
                path = Path(raw)
                if not path.is_file():
                    raise MediaError(f"{source}: image file not found: {path}")
                with Image.open(path) as im:
                    im.load()
                    image = im.copy()
            elif isinstance(raw, (bytes, bytearray)):
                if not raw:
                    raise MediaError(f"{source}: empty image bytes")
                with Image.open(io.BytesIO(raw)) as im:
                    im.load()
                    image = im.copy()
            elif isinstance(raw, (np.ndarray, torch.Tensor)):
                image = _array_to_image(np.asarray(raw), source)
            else:
                raise MediaError(f"{source}: cannot load an image from {type(raw).__name__}")
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise MediaError(f"{source}: not a readable image ({type(exc).__name__}: {exc})") from exc
        if image.width == 0 or image.height == 0:
            raise MediaError(f"{source}: image has zero size")
        return image.convert("RGB")

    def image_processor(self):
        """The pretrained tower's own image processor (loaded on first use), or None for a ViT.

        Where :func:`~omnimodal_vision.pixels.fast_pixels` reproduces it exactly (CLIP- and
        SigLIP-style PIL processors, checked on probe images), preprocessing takes that path."""
        enc = self.cfg["encoder"]
        if self.processor is None and enc["kind"] == "hf" and enc.get("path"):
            from omnimodal_vision.pixels import fast_pixels

            self.processor = _load_processor(enc["path"])
            self.fast_pixels = fast_pixels(self.processor)
        return self.processor

    def preprocess(self, loaded: Image.Image, source: str) -> dict[str, Any]:
        if self.image_processor() is not None:
            if self.fast_pixels is not None:
                return {"pixel_values": self.fast_pixels(loaded)}
            out = self.processor(images=loaded, return_tensors="pt")
            if "spatial_shapes" in out:  # SigLIP2: keep this image's own patches only
                shape = out["spatial_shapes"][0].long()
                n = int(shape.prod())
                return {"pixel_values": out["pixel_values"][0, :n], "spatial_shapes": shape}
            return {"pixel_values": out["pixel_values"][0]}
        size = int(self.cfg.get("image_size", 64))
        image = loaded
        if self.cfg.get("resize", "squash") == "pad":
            image = _pad_to_square(image)
        image = image.resize((size, size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.cfg.get("mean", [0.5] * 3)).view(3, 1, 1)
        std = torch.tensor(self.cfg.get("std", [0.5] * 3)).view(3, 1, 1)
        return {"pixel_values": (x - mean) / std}

    def tower_config(self) -> dict[str, Any]:
        """The pretrained tower's HF config as a dict (from the saved assets, or its path)."""
        if self._tower is None:
            from omnimodal_vision.encoders import read_tower_config

            self._tower = read_tower_config(self.cfg["encoder"].get("path"))
        return self._tower

    def encoder_length(self, features: dict[str, Any]) -> int:
        """Positions the encoder gives for this item: the encoders' own length functions."""
        from omnimodal_vision.encoders import tower_lengths, vit_length

        enc = self.cfg["encoder"]
        if enc["kind"] == "vit":
            return vit_length(int(self.cfg.get("image_size", 64)), int(enc.get("patch_size", 16)), enc.get("features", "patch"))
        return int(tower_lengths(self.tower_config(), enc.get("features", "patch"), features.get("spatial_shapes"))[0])

    def estimate_tokens(self, raw: Any) -> int | None:
        """A ViT and a fixed-resolution tower (CLIP, SigLIP) see every image at one size: one
        count for all. A variable-resolution tower's (SigLIP2) depends on the image: ``None``."""
        from omnimodal_vision.encoders import is_variable_resolution

        if self.cfg["encoder"]["kind"] != "vit" and is_variable_resolution(self.tower_config()["model_type"]):
            return None
        return self.num_tokens(self.encoder_length({}))

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack pixels; variable-resolution (SigLIP2) patches are padded, with their mask and grid."""
        if "spatial_shapes" not in items[0]:
            return {"pixel_values": torch.stack([it["pixel_values"] for it in items])}
        longest = max(it["pixel_values"].shape[0] for it in items)
        pixels = torch.zeros(len(items), longest, items[0]["pixel_values"].shape[1])
        mask = torch.zeros(len(items), longest, dtype=torch.long)
        for i, it in enumerate(items):
            n = it["pixel_values"].shape[0]
            pixels[i, :n], mask[i, :n] = it["pixel_values"], 1
        shapes = torch.stack([it["spatial_shapes"] for it in items])
        return {"pixel_values": pixels, "pixel_attention_mask": mask, "spatial_shapes": shapes}

    # ---- model side ------------------------------------------------------------------
    def build_encoder(self, load_weights: bool = True):
        """A ViT from config, or a pretrained tower (weights from ``path``, or the saved
        architecture with ``load_weights=False``). Leaves ``self.cfg`` as it is."""
        from omnimodal_vision.encoders import HFVisionTower, ViTEncoder

        enc = dict(self.cfg["encoder"])
        if enc.pop("kind") == "vit":
            size = int(self.cfg.get("image_size", 64))
            return ViTEncoder(image_size=size, **enc)
        tower = HFVisionTower.create(enc, None if load_weights else self.tower_config(), load_weights=load_weights)
        self._tower = self._tower or {**tower.model.config.to_dict(), "model_type": tower.model.config.model_type}
        if load_weights:
            self.image_processor()
        return tower

    def save_assets(self, directory: Path) -> None:
        """The tower's image processor and HF config (so the saved model needs no original path)."""
        if self.cfg["encoder"]["kind"] != "hf":
            return
        directory.mkdir(parents=True, exist_ok=True)
        if self.processor is not None:
            self.processor.save_pretrained(directory)
        (directory / TOWER_CONFIG).write_text(json.dumps(self.tower_config(), indent=2, default=str))

    def load_assets(self, directory: Path) -> None:
        if self.cfg["encoder"]["kind"] != "hf":
            return
        if (directory / TOWER_CONFIG).is_file():
            self._tower = json.loads((directory / TOWER_CONFIG).read_text())
        elif self.cfg["encoder"].get("hf_config"):  # saved before the tower config became an asset
            self._tower = dict(self.cfg["encoder"]["hf_config"])
        else:
            raise ConfigError(f"{directory}: the saved model's {TOWER_CONFIG} is missing")
        if (directory / "preprocessor_config.json").is_file():
            from transformers import AutoImageProcessor

            self.processor = AutoImageProcessor.from_pretrained(directory)
        else:
            raise ConfigError(f"{directory}: the saved model's image processor is missing")

    # ---- contract examples -----------------------------------------------------------
    def example_items(self, rng: random.Random, n: int) -> list[Any]:
        """Random RGB arrays of varied sizes and aspect ratios (and one PIL image)."""
        gen = np.random.default_rng(rng.randrange(2**32))
        items: list[Any] = []
        for i in range(n):
            arr = gen.integers(0, 256, size=(rng.randint(8, 96), rng.randint(8, 96), 3), dtype=np.uint8)
            items.append(Image.fromarray(arr) if i == 0 else arr)
        return items

    def bad_items(self) -> list[tuple[Any, str]]:
        return [(b"not an image", "not a readable image"), (np.zeros((4, 4)), "HxWx3"), (np.zeros((0, 5, 3), np.uint8), "")]


TOWER_CONFIG = "tower_config.json"


def _load_processor(path: str):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"vision encoder {path!r}: no image processor found ({exc}). A pretrained tower is "
            "fed by its own processor: save it next to the weights (processor.save_pretrained)."
        ) from exc


def _array_to_image(arr: np.ndarray, source: str) -> Image.Image:
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise MediaError(f"{source}: image array must be HxWx3 (RGB), got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise MediaError(f"{source}: image array holds NaN or infinite values")
    if arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 1:
            raise MediaError(f"{source}: float image arrays must lie in [0, 1] (got {arr.min()}..{arr.max()})")
        arr = (arr * 255).round().astype(np.uint8)
    return Image.fromarray(arr[:, :, :3])


def _pad_to_square(image: Image.Image) -> Image.Image:
    w, h = image.size
    if w == h:
        return image
    mean = tuple(int(c) for c in np.asarray(image).reshape(-1, 3).mean(0))
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), mean)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas
