"""Which frames to take: a pure function of (frame count, fps, config), so runs, resumes and the
feature cache always see the same indices.

Knobs (``modalities.video.*``): ``num_frames`` (a fixed count, uniform over the clip), else
``fps`` (frames per second of video), else every frame; then ``max_frames`` caps the count and
``max_tokens`` (a per-clip pseudo-token budget) lowers it further. Frames are always taken at the
centres of equal segments of the clip, so one frame is the middle one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omnimodal.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """The sampling knobs, checked."""

    num_frames: int | None = 8
    fps: float | None = None
    max_frames: int | None = 32
    max_tokens: int | None = None

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Sampling:
        """Read and check ``num_frames``, ``fps``, ``max_frames``, ``max_tokens`` of a video config."""
        values = {}
        for key in ("num_frames", "max_frames", "max_tokens"):
            v = cfg.get(key, getattr(cls, key))
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"video.{key} must be a positive integer or null, got {v!r}")
            values[key] = v
        fps = cfg.get("fps")
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0 or not math.isfinite(fps)):
            raise ConfigError(f"video.fps must be a positive number or null, got {fps!r}")
        return cls(values["num_frames"], None if fps is None else float(fps), values["max_frames"], values["max_tokens"])


def frame_count(total: int, native_fps: float, sampling: Sampling, tokens: Callable[[int], int]) -> int:
    """How many frames to take from a clip of ``total`` frames at ``native_fps``.

    ``tokens(n)`` is the clip's pseudo-token count for ``n`` frames (the encoder and projector's
    own count); the result is the largest count within every cap.
    """
    if total < 1:
        raise ValueError("a clip has at least one frame")
    if sampling.num_frames is not None:
        n = sampling.num_frames
    elif sampling.fps is not None:
        n = max(1, round(total / native_fps * sampling.fps))
    else:
        n = total
    if sampling.max_frames is not None:
        n = min(n, sampling.max_frames)
    if sampling.max_tokens is not None:
        if tokens(1) > sampling.max_tokens:
            raise ConfigError(f"video.max_tokens={sampling.max_tokens} is below the {tokens(1)} pseudo-tokens of a single frame")
        while tokens(n) > sampling.max_tokens:
            n -= 1
    return n


def uniform_indices(total: int, n: int) -> list[int]:
    """``n`` frame indices at the centres of ``n`` equal segments of ``total`` frames.

    With ``n > total`` some frames repeat (the count, and so the token count, stays ``n``).
    """
    return [min(total - 1, (2 * i + 1) * total // (2 * n)) for i in range(n)]


def sample_indices(total: int, native_fps: float, sampling: Sampling, tokens: Callable[[int], int] = lambda n: n) -> list[int]:
    """The frame indices to decode: :func:`frame_count` frames, uniformly spread."""
    return uniform_indices(total, frame_count(total, native_fps, sampling, tokens))
