"""The Lightning pieces, usable with your own ``lightning.Trainer``.

:class:`OmniLightningModule` (stages, token-weighted loss, exact modes), :class:`OmniDataModule`
(datasets, collators, the resumable sampler) and :mod:`omnimodal.training.kit` (what
``omnimodal train`` adds: start report, atomic checkpoint I/O, throughput logger, the stored
blind baseline and data paths).
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "OmniLightningModule": "omnimodal.training.module",
    "OmniDataModule": "omnimodal.training.datamodule",
}

__all__ = ["OmniDataModule", "OmniLightningModule"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omnimodal.training' has no attribute {name!r}")
