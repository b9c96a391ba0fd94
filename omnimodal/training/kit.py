"""What ``omnimodal train`` adds around Lightning, for use with your own ``lightning.Trainer``.

:class:`~omnimodal.training.module.OmniLightningModule` and
:class:`~omnimodal.training.datamodule.OmniDataModule` are plain Lightning pieces: give them to
any ``Trainer`` with your own loggers (CSV, TensorBoard, W&B, MLflow), callbacks and strategy.
This module holds the rest of what a run does, so that a model trained that way reads like one
from ``omnimodal train`` (``omnimodal eval RUN`` and ``omnimodal.load`` work on it)::

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from omnimodal.training import OmniDataModule, OmniLightningModule, kit

    dm = OmniDataModule(data_cfg, files, model.tokenizer, model.modalities, model.placeholder_ids)
    module = OmniLightningModule(model, stage)
    trainer = L.Trainer(logger=CSVLogger("runs"), plugins=[kit.checkpoint_io()], max_steps=100,
                        callbacks=[*kit.callbacks(files, stage), *kit.checkpoint_callbacks("runs/checkpoints", "val/loss")])
    trainer.fit(module, datamodule=dm)
    kit.finish(module.model, dm, "runs/my-run")   # blind baseline + data paths stored, model/ written
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from omnimodal.training.checkpoint import AtomicCheckpointIO
from omnimodal.training.module import parameter_table
from omnimodal.training.throughput import ThroughputLogger


class StartReport(L.Callback):
    """At fit start: gradient checkpointing if asked, the data files recorded in the model (so
    ``omnimodal eval RUN`` finds the test split), and the table of trainable/frozen parameters."""

    def __init__(self, files: dict[str, list[Path]], stage: dict[str, Any], gradient_checkpointing: bool = False):
        self.files, self.stage, self.gradient_checkpointing = files, stage, gradient_checkpointing

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.gradient_checkpointing:
            pl_module.model.decoder.gradient_checkpointing_enable()
        record_data_files(pl_module.model, self.files)
        if trainer.is_global_zero:
            print("\n" + parameter_table(pl_module.model, self.stage) + "\n", flush=True)


def record_data_files(model, files: dict[str, list[Path]]) -> None:
    """Store the run's data files (absolute) in ``model.extra["data"]``."""
    model.extra["data"] = {split: [str(Path(f).resolve()) for f in fs] for split, fs in files.items()}


def callbacks(files: dict[str, list[Path]], stage: dict[str, Any], gradient_checkpointing: bool = False) -> list[L.Callback]:
    """The callbacks ``omnimodal train`` adds: the start report and the throughput logger."""
    return [StartReport(files, stage, gradient_checkpointing), ThroughputLogger()]


def checkpoint_callbacks(dirpath: str | Path, monitor: str | None = None,
                         every_n_train_steps: int | None = None) -> list[ModelCheckpoint]:
    """``last.ckpt`` at every save point (each epoch end; every N steps if asked) and, when a
    metric is monitored, the best checkpoint by it beside it (``epoch=E-step=S.ckpt``).

    Lightning's own ``save_last=True`` rewrites ``last.ckpt`` only at a step where it also wrote
    a top-k checkpoint: after an epoch whose validation loss was not the best, ``last.ckpt``
    stayed at the best epoch and ``ckpt_path=last`` went back to it. Without a monitored metric
    its top-k file was a second copy of ``last.ckpt``; here there is only ``last.ckpt``.
    """
    last = ModelCheckpoint(dirpath=dirpath, filename=ModelCheckpoint.CHECKPOINT_NAME_LAST, save_top_k=1, monitor=None,
                           enable_version_counter=False, every_n_train_steps=every_n_train_steps)
    if monitor is None:
        return [last]
    # Judged after validation only: a run stopped (max_steps) before its first validation has no
    # metric to judge by, and Lightning warned "could not find the monitored key" at its end.
    best = ModelCheckpoint(dirpath=dirpath, save_top_k=1, monitor=monitor, every_n_train_steps=every_n_train_steps,
                           save_on_train_epoch_end=False)
    return [best, last]


def checkpoint_io() -> AtomicCheckpointIO:
    """Checkpoint I/O that writes to a temporary file and renames it (a kill never leaves half a file)."""
    return AtomicCheckpointIO()


def finish(model, datamodule, out_dir: str | Path, lora: str = "merge") -> Path:
    """Store the blind baseline (from the data module's training split) and write ``out_dir/model``.

    Returns the model directory. ``omnimodal eval out_dir`` then evaluates it on the recorded
    test split beside that baseline, and ``omnimodal.load(out_dir)`` loads it.
    """
    from omnimodal.eval.heldout import blind_baseline

    records = datamodule.load_records()
    model.extra["blind_baseline"] = blind_baseline(records["train"])
    if "data" not in model.extra:
        record_data_files(model, datamodule.files)
    target = Path(out_dir) / "model"
    model.save_pretrained(target, lora=lora)
    return target
