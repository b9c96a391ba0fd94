"""Throughput logging: samples/s and tokens/s over the last logging window."""

from __future__ import annotations

import time

import lightning as L


class ThroughputLogger(L.Callback):
    """Logs ``train/samples_per_sec`` and ``train/tokens_per_sec`` (non-pad tokens)."""

    def __init__(self, window: int = 10):
        self.window = window
        self._reset()

    def _reset(self) -> None:
        self.t0 = time.perf_counter()
        self.samples = 0
        self.tokens = 0
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += batch["input_ids"].shape[0]
        self.tokens += int(batch["attention_mask"].sum())
        self.steps += 1
        if self.steps >= self.window:
            dt = time.perf_counter() - self.t0
            pl_module.log("train/samples_per_sec", self.samples / dt, prog_bar=False)
            pl_module.log("train/tokens_per_sec", self.tokens / dt, prog_bar=True)
            self._reset()
