"""LightningModule around OmniModel: stages decide what trains; frozen parts stay in eval mode."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from omnimodal.model import OmniModel


def apply_stage(model: OmniModel, stage: dict[str, Any], modality_cfgs: dict[str, dict[str, Any]]) -> None:
    """Set requires_grad (and eval mode for frozen parts) per the stage and each encoder's switch."""
    model.set_trainable("decoder", bool(stage.get("train_decoder", True)))
    for name in model.modalities:
        own = bool((modality_cfgs.get(name) or {}).get("train_encoder", True))
        model.set_trainable(f"encoders.{name}", bool(stage.get("train_encoders", True)) and own)
        model.set_trainable(f"projectors.{name}", bool(stage.get("train_projectors", True)))


def parameter_groups(model: OmniModel, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters, with no weight decay on biases and norms (1-D tensors)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class OmniLightningModule(L.LightningModule):
    """Trains an :class:`OmniModel` with AdamW, warmup and cosine decay."""

    def __init__(self, model: OmniModel, stage: dict[str, Any], modality_cfgs: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.stage = dict(stage)
        apply_stage(model, self.stage, modality_cfgs or {})
        # Plain containers only: an OmegaConf object here breaks weights_only checkpoint loading.
        self.save_hyperparameters({"stage": self.stage}, logger=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.train(mode)  # re-applies eval() to frozen parts
        return self

    def _step(self, batch: dict[str, Any]) -> torch.Tensor:
        out = self.model(**batch)
        loss = out.loss
        if self.training and self.trainer.world_size > 1:
            loss = loss + self._touch_idle(batch)
        return loss

    def _touch_idle(self, batch: dict[str, Any]) -> torch.Tensor:
        """Zero-weight touch of modalities absent from this batch, so DDP sees every parameter used."""
        total = torch.zeros((), device=self.device)
        for name in self.model.modalities:
            if name in batch["media"]:
                continue
            for part in (self.model.encoders[name], self.model.projectors[name]):
                for p in part.parameters():
                    if p.requires_grad:
                        total = total + p.sum() * 0.0
        return total

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch)
        n = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self):
        lr = float(self.stage.get("lr", 5e-4))
        groups = parameter_groups(self.model, float(self.stage.get("weight_decay", 0.0)))
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(self.stage.get("betas", (0.9, 0.999))))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(total * float(self.stage.get("warmup_ratio", 0.0)))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(1, warmup)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
