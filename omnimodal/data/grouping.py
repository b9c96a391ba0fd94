"""Length-grouped batch order (``data.group_by_length=true``): batches of similar lengths, so
little padding, while the order stays a pure function of (seed, epoch).

The megabatch scheme: shuffle every index with a generator seeded ``seed + epoch`` (the same
permutation as :class:`~torch.utils.data.DistributedSampler`, padded the same way to a multiple
of the world size), cut it into windows of ``window`` global steps (``batch_size x world``
conversations each), sort each window by estimated length (longest first, ties by position),
cut it into global steps, then shuffle the steps with the same generator, the step holding the
longest conversation first (so a run that runs out of memory does so at once). Only the very
last step can be short; it stays last, so every rank cuts the same batches from its stream.
Rank ``r`` takes ``step[r::world]`` of each step: ranks get equally many conversations of
similar lengths, and all ranks the same number of batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def grouped_steps(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, world: int = 1, window: int = 50) -> list[list[int]]:
    """The epoch's global steps (each ``batch_size * world`` indices, the last one possibly fewer)."""
    n = len(lengths)
    if n == 0:
        return []
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g).tolist()
    total = -(-n // world) * world
    while len(order) < total:  # pad as DistributedSampler does: repeat from the start
        order += order[: total - len(order)]
    step = batch_size * world
    span = step * max(1, int(window))
    steps: list[list[int]] = []
    for lo in range(0, total, span):
        chunk = sorted(order[lo : lo + span], key=lambda i: -lengths[i])  # stable: ties keep their place
        steps += [chunk[k : k + step] for k in range(0, len(chunk), step)]
    tail = [steps.pop()] if len(steps[-1]) < step else []
    steps = [steps[i] for i in torch.randperm(len(steps), generator=g).tolist()]
    if steps:
        longest = max(range(len(steps)), key=lambda s: (lengths[steps[s][0]], -s))
        steps.insert(0, steps.pop(longest))
    return steps + tail


def rank_indices(steps: list[list[int]], rank: int, world: int) -> list[int]:
    """Rank ``rank``'s indices in batch order: its share ``step[rank::world]`` of each step."""
    return [i for s in steps for i in s[rank::world]]
