"""Vision encoders: a ViT built from config, and pretrained Hugging Face towers (CLIP, SigLIP)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omnimodal.errors import ConfigError


class ViTEncoder(nn.Module):
    """A plain ViT: patch embedding, learned positions, pre-norm blocks, closing LayerNorm.

    The closing LayerNorm matters: without it the demo stays at the blind baseline.
    """

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 16,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4,
        dropout: float = 0.0,
        features: str = "patch",
    ):
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(f"vit: image_size {image_size} is not a multiple of patch_size {patch_size}")
        if features not in ("patch", "cls_patch"):
            raise ConfigError(f"vit: features must be 'patch' or 'cls_patch', got {features!r}")
        self.features = features
        self.out_dim = width
        n = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, int(width * mlp_ratio), dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        if self.features == "patch":
            x = x[:, 1:]
        return x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


_TOWERS = {
    "clip": "CLIPVisionModel",
    "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
    "siglip2": "Siglip2VisionModel",
    "siglip2_vision_model": "Siglip2VisionModel",
}


class HFVisionTower(nn.Module):
    """A pretrained CLIP/SigLIP vision tower with feature-layer and CLS choice."""

    def __init__(self, model: nn.Module, feature_layer: int = -2, features: str = "patch"):
        super().__init__()
        if features not in ("patch", "cls_patch"):
            raise ConfigError(f"hf vision tower: features must be 'patch' or 'cls_patch', got {features!r}")
        self.model = model
        self.feature_layer = feature_layer
        cfg = model.config
        self.has_cls = "clip" in cfg.model_type
        self.keep_cls = features == "cls_patch" and self.has_cls
        self.out_dim = cfg.hidden_size

    @classmethod
    def create(cls, enc: dict[str, Any], load_weights: bool = True) -> HFVisionTower:
        """Load by hub id or local path (``load_weights``) or build from a stored ``hf_config``."""
        import transformers

        feature_layer = enc.get("feature_layer", -2)
        features = enc.get("features", "patch")
        if load_weights or not enc.get("hf_config"):
            path = enc.get("path")
            if not path:
                raise ConfigError("vision encoder kind 'hf' needs `path` (a hub id or a local directory)")
            try:
                config = transformers.AutoConfig.from_pretrained(path)
            except OSError as exc:
                raise ConfigError(f"vision encoder: cannot read a model config from {path!r}: {exc}") from exc
            model_cls = _tower_class(config.model_type, path)
            model = getattr(transformers, model_cls).from_pretrained(path)
        else:
            hf = dict(enc["hf_config"])
            model_cls = _tower_class(hf["model_type"], "saved config")
            config_cls = getattr(transformers, model_cls).config_class
            model = getattr(transformers, model_cls)(config_cls.from_dict(hf))
        return cls(model, feature_layer, features)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        x = out.hidden_states[self.feature_layer]
        if self.has_cls and not self.keep_cls:
            x = x[:, 1:]
        return x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def _tower_class(model_type: str, where: str) -> str:
    if model_type not in _TOWERS:
        raise ConfigError(
            f"vision encoder {where}: model type {model_type!r} is not a supported vision tower. "
            f"Supported: {', '.join(sorted(_TOWERS))}."
        )
    return _TOWERS[model_type]
