"""Throughput logging: samples/s and tokens/s over the last logging window, and a run summary."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


class ThroughputLogger(L.Callback):
    """Logs ``train/samples_per_sec`` and ``train/tokens_per_sec`` (non-pad tokens, this rank).

    Token counts stay on the batch's device until a window closes, so logging them costs no
    host-device synchronisation per step. Validation time is left out of both the windows and
    the run summary (:attr:`summary`), which also leaves out the first step (warm-up) and holds
    the peak GPU memory allocated when training on a GPU.
    """

    def __init__(self, window: int = 10):
        self.window = window
        self.summary: dict[str, Any] = {}
        self._total_samples = 0
        self._total_tokens: torch.Tensor | int = 0
        self._total_seconds = 0.0
        self._total_steps = 0
        self._seen_first = False
        self._last = time.perf_counter()
        self._reset()

    def _reset(self) -> None:
        self.t0 = time.perf_counter()
        self.samples = 0
        self.tokens: torch.Tensor | int = 0
        self.steps = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._reset()
        self._last = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        # Validation inside a training epoch (val_check_interval < 1) is not training time.
        self._reset()
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        n = batch["input_ids"].shape[0]
        tokens = batch["attention_mask"].sum()
        self.samples += n
        self.tokens = self.tokens + tokens
        self.steps += 1
        if self._seen_first:
            self._total_samples += n
            self._total_tokens = self._total_tokens + tokens
            self._total_seconds += now - self._last
            self._total_steps += 1
        self._seen_first = True
        self._last = now
        if self.steps >= self.window:
            dt = now - self.t0
            pl_module.log("train/samples_per_sec", self.samples / dt, prog_bar=False)
            pl_module.log("train/tokens_per_sec", int(self.tokens) / dt, prog_bar=True)
            self._reset()

    def on_train_end(self, trainer, pl_module) -> None:
        seconds = self._total_seconds
        summary: dict[str, Any] = {"steps": self._total_steps, "seconds": round(seconds, 3)}
        if self._total_steps and seconds > 0:
            summary["samples_per_sec"] = round(self._total_samples / seconds, 1)
            summary["tokens_per_sec"] = round(int(self._total_tokens) / seconds, 1)
        device = pl_module.device
        if device.type == "cuda":
            summary["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        self.summary = summary

    def describe(self) -> str:
        """One line for the log, e.g. ``1200.5 samples/s, 30012 tokens/s over 330 steps``."""
        s = self.summary
        if not s.get("samples_per_sec"):
            return f"training throughput: too few steps to measure ({s.get('steps', 0)})"
        text = f"training throughput (this rank, warm-up step and validation left out): {s['samples_per_sec']:.1f} samples/s, {s['tokens_per_sec']:.0f} tokens/s over {s['steps']} steps ({s['seconds']:.1f} s)"
        if "peak_gpu_memory_gib" in s:
            text += f"; peak GPU memory allocated {s['peak_gpu_memory_gib']:.2f} GiB"
        return text
