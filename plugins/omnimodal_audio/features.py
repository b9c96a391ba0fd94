"""Whisper-style log-mel features computed with torchaudio (runs in data workers)."""

from __future__ import annotations

import torch


class LogMel:
    """Waveform ``[samples]`` -> normalised log-mel ``[n_mels, frames]``, Whisper's recipe.

    Power mel spectrogram (slaney scale and norm, centred STFT), ``log10`` clamped at
    ``1e-10``, then at ``max - 8`` (80 dB below the clip's peak), then ``(x + 4) / 4``. As in
    Whisper the last STFT frame is dropped, so a clip of ``n`` samples gives
    ``max(1, n // hop_length)`` frames.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160, n_mels: int = 80):
        import torchaudio

        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.transform = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            power=2.0,
            center=True,
            pad_mode="reflect",
            norm="slaney",
            mel_scale="slaney",
        )

    def num_frames(self, num_samples: int) -> int:
        """Frames for a clip of ``num_samples`` samples."""
        return max(1, num_samples // self.hop_length)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        """Return ``[n_mels, frames]`` float32 for a mono waveform ``[samples]``."""
        wave = wave.to(torch.float32)
        frames = self.num_frames(wave.shape[-1])
        if wave.shape[-1] <= self.n_fft // 2:  # reflect padding needs more samples than half a window
            wave = torch.nn.functional.pad(wave, (0, self.n_fft // 2 + 1 - wave.shape[-1]))
        with torch.no_grad():
            mel = self.transform(wave)
        log_spec = mel[:, :frames].clamp(min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0
