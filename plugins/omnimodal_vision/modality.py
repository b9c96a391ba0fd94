"""Vision modality: load (path, bytes, PIL, array) -> preprocess (resize/pad, normalise) -> collate."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from omnimodal.errors import ConfigError, MediaError
from omnimodal.modality import Modality


def _decode_data_url(url: str) -> bytes:
    header, _, data = url.partition(",")
    if not header.startswith("data:") or ";base64" not in header:
        raise MediaError(f"image_url: only base64 data: URLs are accepted here (got {url[:40]!r}...)")
    try:
        return base64.b64decode(data, validate=True)
    except ValueError as exc:
        raise MediaError(f"image_url: invalid base64 data ({exc})") from exc


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

    # ---- data side -------------------------------------------------------------------
    def item_from_api_part(self, part: dict[str, Any]) -> Any:
        if part.get("type") != "image_url":
            return super().item_from_api_part(part)
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise MediaError("image_url part needs image_url.url as a string")
        if url.startswith(("http://", "https://")):
            return url  # the server decides whether remote URLs are allowed, and fetches them
        return _decode_data_url(url)

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
        """The pretrained tower's own image processor (loaded on first use), or None for a ViT."""
        enc = self.cfg["encoder"]
        if self.processor is None and enc["kind"] == "hf" and enc.get("path"):
            self.processor = _load_processor(enc["path"])
        return self.processor

    def preprocess(self, loaded: Image.Image, source: str) -> dict[str, Any]:
        if self.image_processor() is not None:
            pixels = self.processor(images=loaded, return_tensors="pt")["pixel_values"][0]
            return {"pixel_values": pixels}
        size = int(self.cfg.get("image_size", 64))
        image = loaded
        if self.cfg.get("resize", "squash") == "pad":
            image = _pad_to_square(image)
        image = image.resize((size, size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.cfg.get("mean", [0.5] * 3)).view(3, 1, 1)
        std = torch.tensor(self.cfg.get("std", [0.5] * 3)).view(3, 1, 1)
        return {"pixel_values": (x - mean) / std}

    def encoder_length(self, features: dict[str, Any]) -> int:
        enc = self.cfg["encoder"]
        if enc["kind"] == "vit":
            side = int(self.cfg.get("image_size", 64)) // int(enc.get("patch_size", 16))
            return side * side + (1 if enc.get("features", "patch") == "cls_patch" else 0)
        hf = enc.get("hf_config") or {}
        side = int(hf["image_size"]) // int(hf["patch_size"])
        has_cls = enc.get("_has_cls", True)
        keep_cls = enc.get("features", "patch") == "cls_patch" and has_cls
        return side * side + (1 if keep_cls else 0)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"pixel_values": torch.stack([it["pixel_values"] for it in items])}

    # ---- model side ------------------------------------------------------------------
    def build_encoder(self, load_weights: bool = True):
        from omnimodal_vision.encoders import HFVisionTower, ViTEncoder

        enc = dict(self.cfg["encoder"])
        if enc.pop("kind") == "vit":
            size = int(self.cfg.get("image_size", 64))
            return ViTEncoder(image_size=size, **enc)
        tower = HFVisionTower.create(enc, load_weights=load_weights)
        # Remember the architecture so a saved model rebuilds without the original path.
        self.cfg["encoder"]["hf_config"] = tower.model.config.to_dict()
        self.cfg["encoder"]["_has_cls"] = tower.has_cls
        if load_weights:
            self.image_processor()
        return tower

    def save_assets(self, directory: Path) -> None:
        if self.processor is not None:
            self.processor.save_pretrained(directory)

    def load_assets(self, directory: Path) -> None:
        if (directory / "preprocessor_config.json").is_file():
            from transformers import AutoImageProcessor

            self.processor = AutoImageProcessor.from_pretrained(directory)
        elif self.cfg["encoder"]["kind"] == "hf":
            raise ConfigError(f"{directory}: the saved model's image processor is missing")


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
