"""Every random generator a training step may draw from, saved and restored per process.

A checkpoint holds one entry per rank (each rank's dropout masks differ), each with torch's CPU
generator, every CUDA device's generator, Python's ``random`` and NumPy's legacy global
generator including its cached Gaussian. Only plain containers and tensors, so checkpoints
still load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import torch

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """This process's generator states."""
    import numpy as np

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (in this or another process)."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            log.warning("the checkpoint holds %d CUDA generator states but %d devices are visible: CUDA random "
                        "state not restored, so dropout on the GPU does not continue exactly", len(cuda), torch.cuda.device_count())
        else:
            torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's :func:`rng_state`, in rank order (a collective under torch.distributed)."""
    import torch.distributed as dist

    mine = rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def restore_rank_state(states: list[dict[str, Any]], rank: int, world_size: int) -> None:
    """Restore ``rank``'s entry; a checkpoint from another number of processes cannot resume exactly."""
    if len(states) != world_size:
        log.warning("the checkpoint was written by %d processes and resumes in %d: random state restored from "
                    "rank 0's, so the run does not continue exactly", len(states), world_size)
        rank = 0
    set_rng_state(states[rank])
