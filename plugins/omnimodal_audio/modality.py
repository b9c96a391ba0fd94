"""Audio modality: load (path, bytes, array + rate) -> mono, resample, cut -> log-mel -> collate.

Accepted raw items:

- a path (``str`` / ``Path``) or ``bytes`` of a WAV, FLAC or OGG (anything libsndfile reads),
  decoded with soundfile (never torchaudio's TorchCodec-based ``load``);
- ``{"array": samples, "sample_rate": rate}`` or ``(samples, rate)`` where ``samples`` is a
  list, NumPy array or tensor laid out ``[samples]`` (mono) or ``[channels, samples]`` with at
  most 8 channels (torchaudio's layout). Floats are taken as they are (nominally [-1, 1]);
  integer PCM is scaled by its type's range. A bare array without a rate is refused.

Every clip is mixed down to mono, resampled to the encoder's rate and cut to ``max_duration``
(and to Whisper's window); cuts are counted under ``clips_cut`` and logged, never silent.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnimodal.errors import ConfigError, DataError, MediaError
from omnimodal.modality import Modality

log = logging.getLogger(__name__)

MAX_CHANNELS = 8
API_FORMATS = ("wav", "flac", "ogg", "mp3")
_MAX_CUT_WARNINGS = 10
WHISPER_CONFIG = "whisper_config.json"


class AudioModality(Modality):
    """Sound for a log-mel encoder; config keys: see ``conf/modalities/audio.yaml``."""

    def __init__(self, spec, cfg):
        super().__init__(spec, cfg)
        enc = self.cfg.setdefault("encoder", {"kind": "conv"})
        if enc.get("kind") not in ("conv", "whisper"):
            raise ConfigError(f"audio encoder kind {enc.get('kind')!r} is unknown. Valid choices: conv, whisper.")
        for key in ("sample_rate", "n_mels", "n_fft", "hop_length"):
            value = self.cfg.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"audio.{key} must be a positive integer, got {value!r}")
        max_duration = self.cfg.get("max_duration", 30.0)
        if max_duration is not None and not (isinstance(max_duration, (int, float)) and max_duration > 0):
            raise ConfigError(f"audio.max_duration must be a positive number of seconds (or null), got {max_duration!r}")
        self.processor = None  # the WhisperFeatureExtractor of a pretrained Whisper encoder
        self._whisper: dict[str, Any] | None = None  # its architecture (saved as an asset)
        self._logmel = None
        self._cut_warnings = 0

    # ---- settings --------------------------------------------------------------------
    @property
    def is_whisper(self) -> bool:
        """Whether the encoder is a pretrained Whisper encoder (fed by its own feature extractor)."""
        return self.cfg["encoder"]["kind"] == "whisper"

    @property
    def sample_rate(self) -> int:
        """The rate every clip is resampled to: the encoder's (Whisper's extractor's, or ``sample_rate``)."""
        if self.is_whisper:
            return int(self._feature_extractor().sampling_rate)
        return int(self.cfg.get("sample_rate", 16000))

    @property
    def hop_length(self) -> int:
        """Samples per mel frame."""
        if self.is_whisper:
            return int(self._feature_extractor().hop_length)
        return int(self.cfg.get("hop_length", 160))

    def whisper_config(self) -> dict[str, Any]:
        """The Whisper encoder's HF config as a dict (from the saved assets, or its path: JSON only)."""
        if self._whisper is None:
            from omnimodal_audio.encoders import read_whisper_config

            self._whisper = read_whisper_config(self.cfg["encoder"].get("path"))
        return self._whisper

    def whisper_window(self) -> int:
        """Mel frames in Whisper's input window (``max_source_positions * 2``; 3000 = 30 s pretrained)."""
        return int(self.whisper_config()["max_source_positions"]) * 2

    def max_samples(self) -> tuple[int | None, str]:
        """The longest clip kept, in samples at :attr:`sample_rate`, and why (for messages)."""
        limits: list[tuple[int, str]] = []
        max_duration = self.cfg.get("max_duration", 30.0)
        if max_duration is not None:
            limits.append((int(round(max_duration * self.sample_rate)), f"max_duration={max_duration}s"))
        if self.is_whisper:
            window = self.whisper_window() * self.hop_length
            limits.append((window, f"the Whisper window of {window / self.sample_rate:g}s"))
        if not limits:
            return None, ""
        return min(limits, key=lambda x: x[0])

    # ---- data side -------------------------------------------------------------------
    def item_from_part(self, part: dict[str, Any], base_dir: Path | None) -> Any:
        """``{"type": "audio", "path": ...}`` or ``{"type": "audio", "array": [...], "sample_rate": N}``."""
        if "path" not in part and "array" in part:
            return {"array": part["array"], "sample_rate": part.get("sample_rate")}
        return super().item_from_part(part, base_dir)

    def item_from_api_part(self, part: dict[str, Any]) -> Any:
        """OpenAI ``{"type": "input_audio", "input_audio": {"data": <base64>, "format": "wav"}}`` -> bytes."""
        if part.get("type") != "input_audio":
            return super().item_from_api_part(part)
        body = part.get("input_audio")
        if not isinstance(body, dict) or not isinstance(body.get("data"), str):
            raise MediaError("input_audio part needs input_audio.data as a base64 string")
        fmt = body.get("format", "wav")
        if fmt not in API_FORMATS:
            raise MediaError(f"input_audio: format {fmt!r} is not supported. Valid formats: {', '.join(API_FORMATS)}.")
        try:
            return base64.b64decode(body["data"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"input_audio: invalid base64 data ({exc})") from exc

    def load(self, raw: Any, source: str) -> torch.Tensor:
        """Return a mono float32 waveform ``[samples]`` at :attr:`sample_rate`, cut to the maximum length."""
        wave, rate = self._decode(raw, source)  # [channels, samples] float32
        if wave.size == 0:
            raise MediaError(f"{source}: the audio clip is empty (zero samples)")
        if not np.isfinite(wave).all():
            raise MediaError(f"{source}: the audio holds NaN or infinite samples")
        mono = torch.from_numpy(np.ascontiguousarray(wave.mean(axis=0), dtype=np.float32))
        limit, why = self.max_samples()
        target = self.sample_rate
        if limit is not None:
            limit_here = int(math.ceil(limit * rate / target))
            if mono.shape[-1] > limit_here:
                self._report_cut(source, mono.shape[-1] / rate, limit / target, why)
                mono = mono[:limit_here]
        if rate != target:
            import torchaudio.functional as AF

            mono = AF.resample(mono, orig_freq=rate, new_freq=target)
        if limit is not None and mono.shape[-1] > limit:
            mono = mono[:limit]
        return mono

    def preprocess(self, loaded: torch.Tensor, source: str) -> dict[str, Any]:
        """Mono waveform -> ``{"input_features": [n_mels, frames]}`` (Whisper: plus ``num_frames``, ``pad_value``)."""
        if self.is_whisper:
            return self._whisper_features(loaded)
        if self._logmel is None:
            from omnimodal_audio.features import LogMel

            self._logmel = LogMel(
                sample_rate=self.sample_rate,
                n_fft=int(self.cfg.get("n_fft", 400)),
                hop_length=self.hop_length,
                n_mels=int(self.cfg.get("n_mels", 80)),
            )
        return {"input_features": self._logmel(loaded)}

    def encoder_length(self, features: dict[str, Any]) -> int:
        """Encoder positions for this item from its frame count (``ceil(frames / 4)`` by default):
        the encoders' own length functions."""
        from omnimodal_audio.encoders import conv_output_length, whisper_output_length

        frames = int(features.get("num_frames", features["input_features"].shape[-1]))
        if self.is_whisper:
            return whisper_output_length(frames, self.whisper_window())
        return conv_output_length(frames, int(self.cfg["encoder"].get("conv_layers", 2)))

    def estimate_tokens(self, raw: Any) -> int | None:
        """Conv encoder: the count from the clip's length in its file header (``soundfile.info``,
        nothing decoded), cut as :meth:`load` cuts it. Whisper, arrays, unreadable headers: ``None``."""
        if self.is_whisper or not isinstance(raw, (str, Path, bytes, bytearray)):
            return None
        import soundfile as sf

        try:
            info = sf.info(str(raw) if isinstance(raw, (str, Path)) else io.BytesIO(bytes(raw)))
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError):
            return None  # a bad clip is reported when it is loaded
        if info.samplerate <= 0:
            return None
        samples = int(math.ceil(info.frames * self.sample_rate / info.samplerate))
        limit, _ = self.max_samples()
        if limit is not None:
            samples = min(samples, limit)
        from omnimodal_audio.encoders import conv_output_length

        frames = max(1, samples // self.hop_length)
        return self.num_tokens(conv_output_length(frames, int(self.cfg["encoder"].get("conv_layers", 2))))

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad log-mels to the longest: ``{"input_features": [N, n_mels, T], "lengths": [N]}``.

        ``lengths`` counts each clip's own frames. Conv encoder: padded frames are 0 (the encoder
        masks them). Whisper: each clip keeps the two frames that hold its tail and is padded with
        its own silence value (as Whisper's extractor pads), also given as ``pad_values [N]``.
        """
        feats = [it["input_features"] for it in items]
        lengths = torch.tensor([int(it.get("num_frames", it["input_features"].shape[-1])) for it in items])
        n_mels, longest = feats[0].shape[0], max(f.shape[-1] for f in feats)
        if any(f.shape[0] != n_mels for f in feats):
            raise DataError(f"audio collate: items have different mel-bin counts {sorted({f.shape[0] for f in feats})}")
        out = {"lengths": lengths}
        if self.is_whisper:
            pad_values = torch.tensor([float(it["pad_value"]) for it in items], dtype=torch.float32)
            batch = pad_values.view(-1, 1, 1).repeat(1, n_mels, longest)
            out["pad_values"] = pad_values
        else:
            batch = torch.zeros(len(feats), n_mels, longest, dtype=feats[0].dtype)
        for i, f in enumerate(feats):
            batch[i, :, : f.shape[-1]] = f
        out["input_features"] = batch
        return out

    # ---- model side ------------------------------------------------------------------
    def build_encoder(self, load_weights: bool = True):
        """Build the conv+transformer encoder from config, or load / rebuild a Whisper encoder."""
        from omnimodal_audio.encoders import ConvTransformerEncoder, WhisperAudioEncoder

        enc = dict(self.cfg["encoder"])
        if enc.pop("kind") == "conv":
            try:
                return ConvTransformerEncoder(n_mels=int(self.cfg.get("n_mels", 80)), **enc)
            except TypeError as exc:
                raise ConfigError(f"audio conv encoder: bad option ({exc})") from exc
        if self.processor is None and load_weights:
            self.processor = _load_feature_extractor(enc.get("path"))
        encoder = WhisperAudioEncoder.create(enc, None if load_weights else self.whisper_config(), load_weights=load_weights)
        config = encoder.model.config
        self._whisper = self._whisper or config.to_dict()
        if self.processor is not None:
            if int(self.processor.feature_size) != int(config.num_mel_bins):
                raise ConfigError(
                    f"whisper encoder {enc.get('path')!r}: its feature extractor gives {self.processor.feature_size} "
                    f"mel bins but the model expects {config.num_mel_bins}"
                )
            if int(self.processor.nb_max_frames) != encoder.window:
                raise ConfigError(
                    f"whisper encoder {enc.get('path')!r}: its feature extractor's window is "
                    f"{self.processor.nb_max_frames} frames but the model's is {encoder.window} "
                    "(max_source_positions * 2); save a matching WhisperFeatureExtractor (chunk_length)"
                )
        return encoder

    def save_assets(self, directory: Path) -> None:
        """Save the Whisper feature extractor and config next to the model (nothing for the conv encoder)."""
        if not self.is_whisper:
            return
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._feature_extractor().save_pretrained(directory)
        (directory / WHISPER_CONFIG).write_text(json.dumps(self.whisper_config(), indent=2, default=str))

    def load_assets(self, directory: Path) -> None:
        """Load the Whisper feature extractor and config saved by :meth:`save_assets`."""
        if not self.is_whisper:
            return
        directory = Path(directory)
        if (directory / WHISPER_CONFIG).is_file():
            self._whisper = json.loads((directory / WHISPER_CONFIG).read_text())
        elif self.cfg["encoder"].get("hf_config"):  # saved before the config became an asset
            self._whisper = dict(self.cfg["encoder"]["hf_config"])
        else:
            raise ConfigError(f"{directory}: the saved model's {WHISPER_CONFIG} is missing")
        if not (directory / "preprocessor_config.json").is_file():
            raise ConfigError(f"{directory}: the saved model's Whisper feature extractor is missing")
        from transformers import WhisperFeatureExtractor

        self.processor = WhisperFeatureExtractor.from_pretrained(directory)

    # ---- contract examples -----------------------------------------------------------
    def example_items(self, rng: random.Random, n: int) -> list[Any]:
        """Noise and tones from 0.05 s to 1.5 s (mono and stereo, several sample rates)."""
        gen = np.random.default_rng(rng.randrange(2**32))
        items: list[Any] = []
        for i in range(n):
            rate = rng.choice([8000, 16000, 22050])
            samples = max(1, int(rate * rng.uniform(0.05, 1.5)))
            wave = (0.3 * gen.standard_normal((1 + i % 2, samples))).astype(np.float32)
            items.append({"array": wave if i % 2 else wave[0], "sample_rate": rate})
        return items

    def bad_items(self) -> list[tuple[Any, str]]:
        return [
            (b"RIFF....not audio", "not a readable audio file"),
            ({"array": np.zeros(0, np.float32), "sample_rate": 16000}, "empty"),
            ({"array": np.full(100, np.nan, np.float32), "sample_rate": 16000}, "NaN"),
            (np.zeros(100, np.float32), "sample rate"),
        ]

    # ---- helpers ---------------------------------------------------------------------
    def _feature_extractor(self):
        if self.processor is None:
            self.processor = _load_feature_extractor(self.cfg["encoder"].get("path"))
        return self.processor

    def _whisper_features(self, wave: torch.Tensor) -> dict[str, Any]:
        fe = self._feature_extractor()
        full = fe(
            wave.numpy(),
            sampling_rate=fe.sampling_rate,
            return_tensors="pt",
            padding="max_length",
            truncation=True,
        )["input_features"][0]
        frames = min(max(1, math.ceil(wave.shape[-1] / fe.hop_length)), full.shape[-1])
        # The two frames after the clip still hold its tail (the STFT window is centred) and feed
        # its last encoder position: keep them, so the result equals Whisper's own padded path.
        # Frames further on are Whisper's silence (its clamp floor), as the window's last one.
        return {
            "input_features": full[:, : frames + 2].clone(),
            "num_frames": frames,
            "pad_value": float(full[:, -1].min()),
        }

    def _report_cut(self, source: str, seconds: float, limit_s: float, why: str) -> None:
        self.count("clips_cut")
        self._cut_warnings += 1
        if self._cut_warnings <= _MAX_CUT_WARNINGS:
            more = " (further cuts are counted under 'clips_cut', not logged)" if self._cut_warnings == _MAX_CUT_WARNINGS else ""
            log.warning("%s: audio clip of %.2fs cut to %.2fs (%s)%s", source, seconds, limit_s, why, more)

    def _decode(self, raw: Any, source: str) -> tuple[np.ndarray, int]:
        """Any accepted raw item -> (``[channels, samples]`` float32, sample rate)."""
        import soundfile as sf

        if isinstance(raw, (str, Path)):
            path = Path(raw)
            if not path.is_file():
                raise MediaError(f"{source}: audio file not found: {path}")
            return _read_soundfile(sf, str(path), source)
        if isinstance(raw, (bytes, bytearray, memoryview)):
            if not len(raw):
                raise MediaError(f"{source}: empty audio bytes")
            return _read_soundfile(sf, io.BytesIO(bytes(raw)), source)
        if isinstance(raw, dict):
            if "array" not in raw:
                raise MediaError(f"{source}: an audio dict needs 'array' and 'sample_rate' (got keys {sorted(raw)})")
            rate = raw.get("sample_rate", raw.get("sampling_rate"))
            return _array_to_wave(raw["array"], source), _check_rate(rate, source)
        if isinstance(raw, tuple) and len(raw) == 2:
            return _array_to_wave(raw[0], source), _check_rate(raw[1], source)
        if isinstance(raw, (np.ndarray, torch.Tensor, list)):
            raise MediaError(
                f"{source}: a raw audio array needs its sample rate: pass "
                "{'array': samples, 'sample_rate': rate} or (samples, rate)"
            )
        raise MediaError(f"{source}: cannot load audio from {type(raw).__name__}")


def _read_soundfile(sf, file: Any, source: str) -> tuple[np.ndarray, int]:
    try:
        data, rate = sf.read(file, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as exc:
        raise MediaError(f"{source}: not a readable audio file (WAV, FLAC, OGG...): {exc}") from exc
    return data.T, int(rate)


def _check_rate(rate: Any, source: str) -> int:
    if rate is None:
        raise MediaError(f"{source}: a raw audio array needs its sample rate ('sample_rate')")
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise MediaError(f"{source}: sample rate must be a positive integer, got {rate!r}") from None
    if isinstance(rate, bool) or not math.isfinite(value) or value <= 0 or value != int(value):
        raise MediaError(f"{source}: sample rate must be a positive integer, got {rate!r}")
    return int(value)


def _array_to_wave(array: Any, source: str) -> np.ndarray:
    """``[samples]`` or ``[channels, samples]`` (channels <= 8) -> ``[channels, samples]`` float32."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    try:
        arr = np.asarray(array)
    except ValueError as exc:  # ragged nested lists
        raise MediaError(f"{source}: audio array is not rectangular ({exc})") from exc
    if arr.dtype.kind in "iu":
        info = np.iinfo(arr.dtype)
        arr = arr.astype(np.float32) / float(max(abs(info.min), info.max))
    elif arr.dtype.kind == "b" or arr.dtype.kind not in "f":
        raise MediaError(f"{source}: audio array must hold numbers, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    elif arr.ndim == 2:
        channels, samples = arr.shape
        if channels > MAX_CHANNELS:
            hint = (
                " It looks like [samples, channels]: transpose it to [channels, samples]."
                if samples <= MAX_CHANNELS
                else ""
            )
            raise MediaError(
                f"{source}: audio array of shape {tuple(arr.shape)} must be [samples] or "
                f"[channels, samples] with at most {MAX_CHANNELS} channels.{hint}"
            )
    else:
        raise MediaError(
            f"{source}: audio array of shape {tuple(arr.shape)} must be [samples] or [channels, samples]"
        )
    return arr.astype(np.float32, copy=False)


def _load_feature_extractor(path: str | None):
    if not path:
        raise ConfigError("audio encoder kind 'whisper' needs `path` (a hub id or a local directory)")
    from transformers import WhisperFeatureExtractor

    try:
        return WhisperFeatureExtractor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"whisper encoder {path!r}: no feature extractor found ({exc}). A pretrained Whisper is fed by "
            "its own WhisperFeatureExtractor: save it next to the weights (feature_extractor.save_pretrained)."
        ) from exc
