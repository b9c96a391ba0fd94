"""Checkpoint writes that survive a kill: write to a temporary file, fsync, then rename.

The checkpoint is serialised straight into the temporary file. Lightning's own
``TorchCheckpointIO`` first serialises the whole checkpoint into memory (a second copy of it
at the peak) and hands it to the file in one ``write`` call, which on this project's 2-core
development machine took ~0.5 s per 48 MB against ~0.04 s for ``torch.save`` into the file; a
remote path (``s3://...``) still goes through Lightning's fsspec writer.

Test hook: ``OMNIMODAL_TEST_EXIT_AT=<point>:<step>`` hard-exits the process (``os._exit``, as a
SIGKILL would: no cleanup, no flush) while ``last.ckpt`` of global step ``<step>`` is saved, at
``<point>``: ``after_write`` (the checkpoint is in place) or ``before_rename`` (the temporary
file is written, the rename has not happened: the previous checkpoint is still the last one).
The kill-and-resume tests use it to kill a run at an exact point, with no race.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

EXIT_ENV = "OMNIMODAL_TEST_EXIT_AT"
EXIT_POINTS = ("after_write", "before_rename")
EXIT_CODE = 86


def _exit_point(env: str | None) -> tuple[str, int] | None:
    """Parse ``<point>:<step>`` (``None`` when unset); a malformed value is an error, not ignored."""
    if not env:
        return None
    point, _, step = env.partition(":")
    if point not in EXIT_POINTS or not step.isdigit():
        raise ValueError(f"{EXIT_ENV}={env!r}: expected <point>:<step> with point one of {EXIT_POINTS}")
    return point, int(step)


class AtomicCheckpointIO(TorchCheckpointIO):
    """A process killed during a save leaves the previous checkpoint intact, never a torn one."""

    def __init__(self) -> None:
        super().__init__()
        self.exit_at = _exit_point(os.environ.get(EXIT_ENV))

    def _maybe_exit(self, point: str, path: Path, checkpoint: dict[str, Any]) -> None:
        if self.exit_at == (point, checkpoint.get("global_step")) and path.name == "last.ckpt":
            os._exit(EXIT_CODE)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path) or storage_options is not None:
            # remote storage (fsspec's transaction makes that write atomic); storage_options:
            # Lightning's writer raises the TypeError that says it takes none
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        self._maybe_exit("before_rename", path, checkpoint)
        os.replace(tmp, path)
        self._maybe_exit("after_write", path, checkpoint)
