"""Audio encoders: a conv-subsampling transformer built from config, and a pretrained Whisper encoder.

Both take the collated batch ``(input_features [N, n_mels, T], lengths [N])`` and return
``(features [N, L, d], mask [N, L])`` where ``mask`` is True on frames that belong to the clip;
padded frames are False and never become tokens the decoder attends to.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from omnimodal.errors import ConfigError


def conv_output_length(frames, conv_layers: int = 2):
    """Output length of ``conv_layers`` stride-2 convolutions (odd kernel, 'same' padding).

    Works on an ``int`` (the data side counting one item's tokens) and on a tensor of lengths
    (:class:`ConvTransformerEncoder` sizing its mask): one function, so the two cannot drift.
    """
    for _ in range(conv_layers):
        frames = (frames + 1) // 2
    return frames


def whisper_output_length(frames, window: int):
    """Positions a Whisper encoder keeps for a clip of ``frames`` mel frames (conv2 has stride 2).

    The clip is cut to the ``window``; works on an ``int`` or a tensor of lengths, like
    :func:`conv_output_length`.
    """
    if isinstance(frames, torch.Tensor):
        return (frames.clamp(max=window) + 1) // 2
    return (min(int(frames), window) + 1) // 2


def lengths_to_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """``[N]`` lengths -> ``[N, size]`` bool mask of positions ``< length``."""
    return torch.arange(size, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The classic ``[length, dim]`` sine/cosine position table (Whisper's layout: sines, then cosines)."""
    half = dim // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    freqs = torch.exp(-scale * torch.arange(half, device=device, dtype=torch.float32))
    angles = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1) * freqs.unsqueeze(0)
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    if table.shape[1] < dim:
        table = nn.functional.pad(table, (0, dim - table.shape[1]))
    return table.to(dtype)


class ConvTransformerEncoder(nn.Module):
    """Log-mel -> ``conv_layers`` stride-2 conv1d + GELU -> pre-norm transformer -> LayerNorm.

    With two conv layers an item of ``T`` mel frames (10 ms each) gives ``ceil(T / 4)``
    positions (40 ms each). Padded frames are zeroed after every convolution and excluded from
    attention, so an item encodes the same alone or in a padded batch.
    """

    def __init__(
        self,
        n_mels: int = 80,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4,
        dropout: float = 0.0,
        conv_layers: int = 2,
        kernel_size: int = 3,
        positions: str = "sinusoidal",
        max_positions: int = 1500,
    ):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ConfigError(f"audio conv encoder: kernel_size must be odd, got {kernel_size}")
        if conv_layers < 0:
            raise ConfigError(f"audio conv encoder: conv_layers must be >= 0, got {conv_layers}")
        if positions not in ("sinusoidal", "learned"):
            raise ConfigError(f"audio conv encoder: positions must be 'sinusoidal' or 'learned', got {positions!r}")
        if width % heads:
            raise ConfigError(f"audio conv encoder: width {width} is not divisible by heads={heads}")
        self.out_dim = width
        self.conv_layers = conv_layers
        self.positions = positions
        self.max_positions = max_positions
        self.input_proj = nn.Conv1d(n_mels, width, 1) if conv_layers == 0 else None
        self.convs = nn.ModuleList(
            nn.Conv1d(n_mels if i == 0 else width, width, kernel_size, stride=2, padding=kernel_size // 2)
            for i in range(conv_layers)
        )
        self.pos_embed = nn.Parameter(torch.randn(max_positions, width) * 0.02) if positions == "learned" else None
        layer = nn.TransformerEncoderLayer(
            width, heads, int(width * mlp_ratio), dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def output_length(self, frames: int) -> int:
        """Encoder positions for an item of ``frames`` mel frames."""
        return conv_output_length(frames, self.conv_layers)

    def forward(
        self, input_features: torch.Tensor, lengths: torch.Tensor | None = None, **_: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, frames = input_features.shape
        if lengths is None:
            lengths = torch.full((n,), frames, dtype=torch.long, device=input_features.device)
        lengths = lengths.to(input_features.device)
        x = input_features * lengths_to_mask(lengths, frames).unsqueeze(1).to(input_features.dtype)
        if self.input_proj is not None:
            x = self.input_proj(x)
        frames_in = lengths
        for i, conv in enumerate(self.convs):
            x = nn.functional.gelu(conv(x))
            lengths = conv_output_length(frames_in, i + 1)
            x = x * lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
        x = x.transpose(1, 2)  # [N, L, width]
        length = x.shape[1]
        if self.pos_embed is not None:
            if length > self.max_positions:
                raise ValueError(
                    f"audio conv encoder: {length} positions exceed max_positions={self.max_positions} "
                    "(lower modalities.audio.max_duration or raise the encoder's max_positions)"
                )
            x = x + self.pos_embed[:length]
        else:
            x = x + sinusoidal_positions(length, x.shape[-1], x.device, x.dtype)
        mask = lengths_to_mask(lengths, length)
        x = self.norm(self.blocks(x, src_key_padding_mask=~mask))
        return x * mask.unsqueeze(-1).to(x.dtype), mask


class WhisperAudioEncoder(nn.Module):
    """A pretrained Whisper encoder with feature-layer choice, fed clips shorter than its window.

    Whisper only accepts its full window (``max_source_positions * 2`` mel frames, 30 s when
    pretrained). The batch is padded to it (the collate already does so with each clip's own
    silence value), and only the ``ceil(frames / 2)`` output positions that belong to each clip
    are kept, so the token count still follows the clip's length.
    """

    def __init__(self, model: nn.Module, feature_layer: int = -1):
        super().__init__()
        self.model = model
        self.feature_layer = feature_layer
        cfg = model.config
        self.out_dim = cfg.d_model
        self.window = int(cfg.max_source_positions) * 2
        n_layers = int(cfg.encoder_layers)
        if not -(n_layers + 1) <= feature_layer <= n_layers:
            raise ConfigError(
                f"whisper encoder: feature_layer {feature_layer} is out of range for {n_layers} layers "
                f"(hidden_states has {n_layers + 1} entries: embeddings, then each layer; -1 is the last, normed)"
            )

    @classmethod
    def create(cls, enc: dict[str, Any], whisper_config: dict[str, Any] | None = None, load_weights: bool = True) -> WhisperAudioEncoder:
        """Load weights by hub id or local path (``load_weights``), or build the architecture
        from ``whisper_config`` (a saved model's own copy of the Whisper config)."""
        from transformers import WhisperConfig, WhisperModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        feature_layer = int(enc.get("feature_layer", -1))
        if load_weights or whisper_config is None:
            path = enc.get("path")
            read_whisper_config(path)
            model = WhisperModel.from_pretrained(path).get_encoder()
        else:
            model = WhisperEncoder(WhisperConfig.from_dict(dict(whisper_config)))
        return cls(model, feature_layer)

    def output_length(self, frames: int) -> int:
        """Encoder positions for an item of ``frames`` mel frames (conv2 has stride 2)."""
        return whisper_output_length(frames, self.window)

    def forward(
        self,
        input_features: torch.Tensor,
        lengths: torch.Tensor | None = None,
        pad_values: torch.Tensor | None = None,
        **_: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, frames = input_features.shape
        device = input_features.device
        if lengths is None:
            lengths = torch.full((n,), min(frames, self.window), dtype=torch.long, device=device)
        lengths = lengths.to(device).clamp(max=self.window)
        x = input_features
        if frames > self.window:
            x = x[:, :, : self.window]
        elif frames < self.window:
            if pad_values is None:  # a clip's silence is its minimum (Whisper clamps at max - 8)
                real = lengths_to_mask(lengths, frames).unsqueeze(1)
                pad_values = torch.where(real, x, torch.full_like(x, float("inf"))).amin(dim=(1, 2))
            fill = pad_values.to(device, x.dtype).view(n, 1, 1).expand(n, x.shape[1], self.window - frames)
            x = torch.cat([x, fill], dim=2)
        dtype = next(self.model.parameters()).dtype
        if self.feature_layer == -1:
            hidden = self.model(x.to(dtype)).last_hidden_state
        else:
            hidden = self.model(x.to(dtype), output_hidden_states=True).hidden_states[self.feature_layer]
        out_lengths = whisper_output_length(lengths, self.window)
        keep = int(out_lengths.max())
        hidden = hidden[:, :keep]
        mask = lengths_to_mask(out_lengths, keep)
        return hidden * mask.unsqueeze(-1).to(hidden.dtype), mask


def read_whisper_config(path: str | None) -> dict[str, Any]:
    """The Whisper config at ``path`` (a hub id or a local dir) as a dict: JSON only, no weights."""
    from transformers import WhisperConfig

    if not path:
        raise ConfigError("audio encoder kind 'whisper' needs `path` (a hub id or a local directory)")
    try:
        config = WhisperConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"audio encoder: cannot read a Whisper config from {path!r}: {exc}") from exc
    if config.model_type != "whisper":
        raise ConfigError(f"audio encoder {path!r}: model type {config.model_type!r} is not 'whisper'")
    return config.to_dict()
