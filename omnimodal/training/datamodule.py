"""LightningDataModule: data files in any supported format (or the demo data) -> lazy
datasets -> stateful loaders. Records are read when their sample is loaded; skipped ones
travel back with the batch and are counted here, in the main process."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DistributedSampler

from omnimodal.data.dataset import Collator, ConversationDataset
from omnimodal.data.formats import ReadContext, RecordSet, open_split
from omnimodal.data.records import SkipReport
from omnimodal.errors import ConfigError, DataError
from omnimodal.modality import Modality

log = logging.getLogger(__name__)


def as_paths(value: Any) -> list[Path]:
    """A path, a list of paths, or None -> list of paths."""
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


def read_split(paths: list[Path], part_types: dict[str, str], on_error: str = "raise", report: SkipReport | None = None, data_cfg: dict[str, Any] | None = None) -> RecordSet:
    """The records of several files, indexed and read lazily (``data.format`` and
    ``data.image_folder`` from ``data_cfg``); bad records surface when read."""
    if on_error not in ("raise", "skip"):
        raise DataError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
    cfg = {**(data_cfg or {}), "on_error": on_error}
    return open_split(paths, cfg, ReadContext.for_part_types(part_types, cfg.get("image_folder")))


class _EpochPermutation:
    """Iterator over one epoch's indices; its state is (epoch, position), nothing hidden."""

    def __init__(self, sampler: EpochShuffleSampler):
        self.sampler = sampler
        self.epoch = sampler.epoch
        self.order = sampler.indices(self.epoch)
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self.position >= len(self.order):
            raise StopIteration
        self.position += 1
        return self.order[self.position - 1]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # The sampler's own epoch is left alone: when this state is an exhausted epoch, the
        # loader starts a fresh iterator at once, and that one must take the next epoch.
        self.epoch = int(state["epoch"])
        self.order = self.sampler.indices(self.epoch)
        self.position = int(state["position"])
        if self.position >= len(self.order):
            # An exhausted epoch is the start of the next one. A checkpoint taken on an epoch's
            # last batch holds such a state, and Lightning, which counts that epoch as done,
            # iterates this very iterator for the next epoch: left exhausted, it would give
            # that epoch no batches at all (the resumed run would skip an epoch).
            self.epoch += 1
            self.order = self.sampler.indices(self.epoch)
            self.position = 0


class EpochShuffleSampler(DistributedSampler):
    """Shuffles with a permutation that depends only on (seed, epoch), split across ranks.

    Exact mid-epoch resume: the data loader's state records (epoch, position) and the same
    indices are rebuilt from them, whatever happened to any random generator meanwhile.
    Being a ``DistributedSampler``, Lightning neither replaces nor wraps it under DDP and calls
    ``set_epoch`` at each epoch start; every rank draws the same permutation and takes its share.
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)

    def indices(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch``."""
        current, self.epoch = self.epoch, epoch
        try:
            return list(super().__iter__())
        finally:
            self.epoch = current

    def __iter__(self):
        return _EpochPermutation(self)


class LengthGroupedSampler(EpochShuffleSampler):
    """``data.group_by_length``: this rank's indices in length-grouped batch order
    (:func:`~omnimodal.data.grouping.grouped_steps`), a pure function of (seed, epoch).

    The loader must cut batches of ``batch_size`` from it (``drop_last=False``): each rank's
    stream is its share of each global step, so the cuts fall on step boundaries. Resume is the
    base class's: the loader's state is (epoch, position) and the order is rebuilt from them.
    Still a ``DistributedSampler``, so Lightning neither replaces nor wraps it under DDP.
    """

    def __init__(self, dataset, lengths, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, window: int = 50):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed, shuffle=True)
        if len(lengths) != len(dataset):
            raise ValueError(f"{len(lengths)} lengths for {len(dataset)} samples")
        self.lengths = [int(x) for x in lengths]
        self.batch_size = int(batch_size)
        self.window = int(window)

    def indices(self, epoch: int) -> list[int]:
        from omnimodal.data.grouping import grouped_steps, rank_indices

        steps = grouped_steps(self.lengths, self.batch_size, self.seed, epoch, self.num_replicas, self.window)
        return rank_indices(steps, self.rank, self.num_replicas)


def batches_per_epoch(samples: int, batch_size: int, world: int) -> int:
    """Batches each rank loads per epoch: its ``ceil(samples / world)`` indices (the sampler pads
    the last ones) in batches of ``batch_size``, the last one possibly short. The same with
    ``data.group_by_length`` and ``data.packing`` (a batch is ``batch_size`` conversations)."""
    return math.ceil(math.ceil(samples / world) / batch_size)


def next_epoch(trainer) -> int:
    """The epoch the trainer's fit loop runs next (0 outside a running fit).

    Lightning creates the first iterator of a fit (fresh or resumed) before it calls the
    sampler's ``set_epoch``, so the sampler must already hold that epoch when it is built.
    ``epoch_progress.current.processed`` is exactly the value Lightning passes to ``set_epoch``
    a moment later: after a checkpoint taken at an epoch's end it is the next epoch, whereas
    ``trainer.current_epoch`` still names the finished one at that point.
    """
    from lightning.pytorch.trainer.states import TrainerStatus

    if trainer is None or getattr(trainer, "fit_loop", None) is None or trainer.state.status != TrainerStatus.RUNNING:
        return 0
    return int(trainer.fit_loop.epoch_progress.current.processed)


class OmniDataModule(L.LightningDataModule):
    """Train/val/test conversations for an :class:`~omnimodal.model.OmniModel`."""

    def __init__(self, data_cfg: dict[str, Any], files: dict[str, list[Path]], tokenizer, modalities: dict[str, Modality], placeholder_ids: dict[str, int]):
        super().__init__()
        self.cfg = dict(data_cfg)
        self.files = files
        self.tokenizer = tokenizer
        self.modalities = modalities
        self.placeholder_ids = placeholder_ids
        self.report = SkipReport()
        self.records: dict[str, RecordSet] = {}
        self.part_types = {m.part_type: name for name, m in modalities.items()}
        self.on_error = self.cfg.get("on_error", "raise")
        self.feature_cache = None  # a feature_cache.CacheSetup when data.feature_cache is set
        if self.on_error not in ("raise", "skip"):
            raise DataError(f"data.on_error must be 'raise' or 'skip', got {self.on_error!r}")

    def load_records(self) -> dict[str, RecordSet]:
        """Index every split once; records are read (and validated) lazily, when used.

        Iterating a split streams it (skipping bad records under ``on_error=skip``). Under
        ``on_error=skip`` the test split is a view without the records that fail to parse or
        validate (one pass that keeps an index array; they are counted in the report), so
        evaluation lines predictions up with records.
        """
        if not self.records:
            placeholders = {m.part_type: m.placeholder for m in self.modalities.values()}
            ctx = ReadContext.for_part_types(self.part_types, self.cfg.get("image_folder"), placeholders)
            for split, paths in self.files.items():
                if paths:
                    records = open_split(paths, {**self.cfg, "on_error": self.on_error}, ctx)
                    if split == "test" and self.on_error == "skip":
                        records = records.valid(self.report)
                    self.records[split] = records
        return self.records

    def dataset(self, split: str, mode: str = "train") -> ConversationDataset:
        """A dataset over one split's records."""
        records = self.load_records().get(split, [])
        return ConversationDataset(records, self.tokenizer, self.modalities, self.placeholder_ids, self.cfg.get("max_length"), mode, self.on_error,
                                   on_truncate=self.cfg.get("on_truncate", "count"))

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Feature-cached modalities: read hits from the cache before the batch moves to the device."""
        if self.feature_cache is not None and self.feature_cache.caches:
            from omnimodal.data.feature_cache import resolve_batch

            resolve_batch(batch, self.feature_cache.caches)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the records the data workers skipped (each once, with its reason)."""
        if isinstance(batch, dict):
            for source, reason in batch.pop("skipped", None) or ():
                self.report.add(source, reason)
        return batch

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and not hasattr(self, "train_set"):
            self.train_set = self.dataset("train")
            self.val_set = self.dataset("val") if self.files.get("val") else None

    def num_workers(self) -> int:
        """``data.num_workers`` for the attached trainer's device (CPU without one; see :func:`data_workers`)."""
        device_type = self.trainer.strategy.root_device.type if self.trainer is not None else "cpu"
        return data_workers(self.cfg.get("num_workers", "auto"), device_type)

    def _loader(self, dataset, batch_size: int, shuffle: bool, padding_side: str = "right"):
        import torch
        from torchdata.stateful_dataloader import StatefulDataLoader

        trainer = self.trainer
        workers = self.num_workers()
        seed = int(self.cfg.get("seed", 0))
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if shuffle and self.cfg.get("group_by_length", False):
            sampler = LengthGroupedSampler(dataset, self.lengths(dataset), batch_size, world, rank, seed,
                                           window=int(self.cfg.get("group_window", 50)))
        else:
            sampler = EpochShuffleSampler(dataset, world, rank, seed, shuffle=shuffle)
        sampler.set_epoch(next_epoch(trainer))
        cached = self.feature_cache.active if self.feature_cache is not None else frozenset()
        collate = Collator(self.modalities, self.tokenizer.pad_token_id, padding_side, cached=cached, placeholder_ids=self.placeholder_ids)
        if self.cfg.get("packing", False):
            from omnimodal.data.packing import PackingCollator

            if not self.cfg.get("max_length"):
                raise ConfigError("data.packing=true needs data.max_length (the length of a packed row)")
            collate = PackingCollator(collate, int(self.cfg["max_length"]))
        if workers > 0:  # the batch's small tensors reach this process in one buffer, not one descriptor each
            from omnimodal.data.transport import TransportCollator

            collate = TransportCollator(collate)
        return StatefulDataLoader(
            dataset,
            sampler=sampler,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate,
            persistent_workers=workers > 0,
            # Each new iterator draws its workers' base seed from this generator: with the
            # default (the global one) a resumed run, which makes one more iterator than the
            # straight run did, would shift every later dropout draw.
            generator=torch.Generator().manual_seed(seed),
        )

    def lengths(self, dataset: ConversationDataset):
        """The dataset's length estimates (:mod:`omnimodal.data.lengths`), computed once."""
        if getattr(dataset, "length_estimates", None) is None:
            from omnimodal.data.lengths import estimate_lengths

            dataset.length_estimates = estimate_lengths(dataset)
        return dataset.length_estimates

    def train_dataloader(self):
        return self._loader(self.train_set, int(self.cfg.get("batch_size", 32)), shuffle=True)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return self._loader(self.val_set, int(self.cfg.get("eval_batch_size", 64)), shuffle=False)


def torch_threads_fill_the_cpu() -> bool:
    """Do torch's compute threads already take every core this process may run on?"""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores <= torch.get_num_threads()


def data_workers(requested: int | str | None, device_type: str) -> int:
    """Data-loading processes for ``data.num_workers``: a number as given; ``auto`` (the default):
    none where training runs on a CPU whose cores torch's threads already take, since a worker
    there only takes turns with them (the default demo on 2 cores: 260 s in-process against 286 s
    with one worker, the same accuracy), else one."""
    from omnimodal.errors import ConfigError

    if requested is None or str(requested).lower() == "auto":
        return 0 if device_type == "cpu" and torch_threads_fill_the_cpu() else 1
    try:
        workers = int(requested)
    except (TypeError, ValueError):
        workers = -1
    if workers < 0 or str(requested).strip() != str(workers):
        raise ConfigError(f"data.num_workers={requested!r}: a number of processes (0: load in the training process) or auto")
    return workers
