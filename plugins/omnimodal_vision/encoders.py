"""Vision encoders: a ViT built from config, and pretrained Hugging Face towers (CLIP, SigLIP, SigLIP2).

The output length of each encoder is computed by one pure function here (:func:`vit_length`,
:func:`tower_lengths`) that the encoder itself uses to size its output, and that the modality
calls in data workers to count an item's tokens without building anything.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omnimodal.errors import ConfigError


def vit_length(image_size: int, patch_size: int, features: str = "patch") -> int:
    """Output positions of :class:`ViTEncoder`: the patch grid, plus one with ``cls_patch``."""
    side = int(image_size) // int(patch_size)
    return side * side + (1 if features == "cls_patch" else 0)


def tower_has_cls(model_type: str) -> bool:
    """Whether a Hugging Face vision tower puts a CLS token first (CLIP does, SigLIP/SigLIP2 do not)."""
    return "clip" in model_type


def is_variable_resolution(model_type: str) -> bool:
    """SigLIP2 (NaFlex) towers take a variable number of patches per image."""
    return model_type.startswith("siglip2")


def tower_lengths(tower: dict[str, Any], features: str, spatial_shapes: torch.Tensor | None = None, n: int = 1) -> torch.Tensor:
    """Output positions per image ``[n]`` of an :class:`HFVisionTower` with config ``tower``.

    Fixed-resolution towers (CLIP, SigLIP): the ``image_size // patch_size`` grid, plus the
    CLS token when it is kept. SigLIP2: ``height * width`` patches of each image's
    ``spatial_shapes`` row (its own aspect-preserving grid).
    """
    model_type = tower["model_type"]
    if is_variable_resolution(model_type):
        if spatial_shapes is None:
            raise ConfigError(f"vision tower {model_type!r}: items need 'spatial_shapes' (from its image processor)")
        return spatial_shapes.reshape(-1, 2).long().prod(-1)
    side = int(tower["image_size"]) // int(tower["patch_size"])
    keep_cls = features == "cls_patch" and tower_has_cls(model_type)
    return torch.full((n,), side * side + (1 if keep_cls else 0), dtype=torch.long)


def conv_stem(patch_size: int, width: int) -> nn.Sequential:
    """Xiao et al.'s convolutional stem ("Early Convolutions Help Transformers See Better",
    2021): ``log2(patch_size)`` stride-2 3x3 convolutions with BatchNorm and ReLU, channels
    doubling up to ``width``, then a 1x1 convolution: the same patch grid as a ``patch_size``
    patchify, but each position sees its neighbourhood and not one cut-out square. Under DDP
    its BatchNorm uses each rank's own batch statistics unless ``trainer.sync_batchnorm=true``.
    """
    steps = int(patch_size).bit_length() - 1
    if patch_size < 2 or 2**steps != patch_size:
        raise ConfigError(f"vit: stem 'conv' needs patch_size a power of two, got {patch_size}")
    layers: list[nn.Module] = []
    channels = 3
    for i in range(steps):
        out = max(width >> (steps - 1 - i), 8)
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers, nn.Conv2d(channels, width, 1))


class ViTEncoder(nn.Module):
    """A plain ViT: patch embedding, learned positions, pre-norm blocks, closing LayerNorm.

    The closing LayerNorm matters: without it the demo stays at the blind baseline.
    ``stem="conv"`` replaces the patchify convolution by :func:`conv_stem` (same grid).
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
        stem: str = "patch",
    ):
        super().__init__()
        if stem not in ("patch", "conv"):
            raise ConfigError(f"vit: stem must be 'patch' or 'conv', got {stem!r}")
        if image_size % patch_size:
            raise ConfigError(f"vit: image_size {image_size} is not a multiple of patch_size {patch_size}")
        if features not in ("patch", "cls_patch"):
            raise ConfigError(f"vit: features must be 'patch' or 'cls_patch', got {features!r}")
        self.features = features
        self.out_dim = width
        self.length = vit_length(image_size, patch_size, features)
        n = vit_length(image_size, patch_size, "patch")
        if stem == "conv":
            self.patch_embed = conv_stem(patch_size, width)
        else:
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
        x = x[:, -self.length :]  # drops CLS unless `cls_patch` keeps it
        return x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


_TOWERS = {
    "clip": "CLIPVisionModel",
    "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
    "siglip2_vision_model": "Siglip2VisionModel",
}


class HFVisionTower(nn.Module):
    """A pretrained CLIP / SigLIP / SigLIP2 vision tower with feature-layer and CLS choice.

    SigLIP2 (variable resolution) takes ``pixel_values [N, P, 3*p*p]`` padded patches with
    ``pixel_attention_mask [N, P]`` and ``spatial_shapes [N, 2]``; each image keeps its own
    ``h * w`` positions and the mask marks them.
    """

    def __init__(self, model: nn.Module, feature_layer: int = -2, features: str = "patch"):
        super().__init__()
        if features not in ("patch", "cls_patch"):
            raise ConfigError(f"hf vision tower: features must be 'patch' or 'cls_patch', got {features!r}")
        self.model = model
        self.feature_layer = feature_layer
        self.features = features
        cfg = model.config
        self.tower = {k: getattr(cfg, k, None) for k in ("model_type", "image_size", "patch_size")}
        self.has_cls = tower_has_cls(cfg.model_type)
        self.keep_cls = features == "cls_patch" and self.has_cls
        self.variable = is_variable_resolution(cfg.model_type)
        self.out_dim = cfg.hidden_size

    @classmethod
    def create(cls, enc: dict[str, Any], tower_config: dict[str, Any] | None = None, load_weights: bool = True) -> HFVisionTower:
        """Load weights by hub id or local path (``load_weights``), or build the architecture
        from ``tower_config`` (a saved model's own copy of the tower's HF config)."""
        import transformers

        feature_layer = enc.get("feature_layer", -2)
        features = enc.get("features", "patch")
        if load_weights or tower_config is None:
            path = enc.get("path")
            config = read_tower_config(path)
            model_cls = _tower_class(config["model_type"], path)
            model = getattr(transformers, model_cls).from_pretrained(path)
        else:
            model_cls = _tower_class(tower_config["model_type"], "saved config")
            config_cls = getattr(transformers, model_cls).config_class
            model = getattr(transformers, model_cls)(config_cls.from_dict(dict(tower_config)))
        return cls(model, feature_layer, features)

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = next(self.model.parameters()).dtype
        n = pixel_values.shape[0]
        lengths = tower_lengths(self.tower, self.features, spatial_shapes, n).to(pixel_values.device)
        if self.variable:
            out = self.model(
                pixel_values=pixel_values.to(dtype),
                pixel_attention_mask=pixel_attention_mask,
                spatial_shapes=spatial_shapes,
                output_hidden_states=True,
            )
        else:
            out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        x = out.hidden_states[self.feature_layer]
        x = x[:, 1:] if self.has_cls and not self.keep_cls else x
        x = x[:, : int(lengths.max())]
        mask = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        return x * mask.unsqueeze(-1).to(x.dtype), mask


def read_tower_config(path: str | None) -> dict[str, Any]:
    """The HF config (as a dict) of the vision tower at ``path`` (a hub id or a local dir): JSON only."""
    import transformers

    if not path:
        raise ConfigError("vision encoder kind 'hf' needs `path` (a hub id or a local directory)")
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"vision encoder: cannot read a model config from {path!r}: {exc}") from exc
    config = getattr(config, "vision_config", None) if config.model_type in ("clip", "siglip", "siglip2") else config
    out = config.to_dict()
    out["model_type"] = config.model_type
    _tower_class(out["model_type"], path)
    return out


def _tower_class(model_type: str, where: str) -> str:
    if model_type not in _TOWERS:
        raise ConfigError(
            f"vision encoder {where}: model type {model_type!r} is not a supported vision tower. "
            f"Supported: {', '.join(sorted(_TOWERS))}."
        )
    return _TOWERS[model_type]
