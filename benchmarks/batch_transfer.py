"""Time to receive a ready batch from a data worker: one descriptor per tensor vs one buffer.

    python benchmarks/batch_transfer.py [--batches 30] [--batch-size 32]

A ``DataLoader`` with one worker yields batches shaped like the offline demo's three-modality
batch (token ids, masks, labels, positions, label positions, the splice's indices per modality,
64-px images, log-mel spectrograms, molecule graphs: ~25 tensors) and like a plain four-tensor
Llava batch. The training process sleeps before each ``next()`` so the worker always has the
batch ready; the figure is the median time ``next()`` takes, i.e. what the training process pays
to receive the batch. Each collate runs as is (PyTorch sends every tensor by its own
shared-memory file descriptor) and wrapped in :class:`omnimodal.data.transport.TransportCollator`
(the small tensors in one buffer), alternating.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from omnimodal.data.transport import TransportCollator


def demo_batch(samples: list[int]) -> dict:
    """A batch with the demo's tensors and shapes (values do not matter here)."""
    n, length, items = len(samples), 40, max(1, len(samples) // 3)
    atoms, edges = items * 20, items * 44
    batch = {name: torch.zeros(n, length, dtype=torch.long) for name in ("input_ids", "attention_mask", "labels", "position_ids")}
    batch.update(index=torch.arange(n), label_positions=torch.zeros(n, 4, dtype=torch.long), label_targets=torch.zeros(n, 4, dtype=torch.long),
                 sources=[f"train.jsonl:{i}" for i in samples])
    batch["media"] = {
        "vision": {"pixel_values": torch.zeros(items, 3, 64, 64)},
        "audio": {"input_features": torch.zeros(items, 80, 200), "num_frames": torch.full((items,), 200)},
        "molecule": {"x": torch.zeros(atoms, 9, dtype=torch.long), "edge_index": torch.zeros(2, edges, dtype=torch.long),
                     "edge_attr": torch.zeros(edges, 3, dtype=torch.long), "batch": torch.zeros(atoms, dtype=torch.long),
                     "num_atoms": torch.full((items,), 20)},
    }
    batch["splice"] = {m: {"slots": torch.zeros(items * 16, dtype=torch.long), "item": torch.zeros(items * 16, dtype=torch.long),
                           "pos": torch.zeros(items * 16, dtype=torch.long)} for m in ("vision", "audio", "molecule")}
    return batch


def plain_batch(samples: list[int]) -> dict:
    """A plain Llava batch: ids, mask, labels and 224-px pixels."""
    n = len(samples)
    return {"input_ids": torch.zeros(n, 65, dtype=torch.long), "attention_mask": torch.ones(n, 65, dtype=torch.long),
            "labels": torch.zeros(n, 65, dtype=torch.long), "pixel_values": torch.zeros(n, 3, 224, 224)}


def receive_ms(collate, batches: int, batch_size: int) -> float:
    """Median milliseconds of ``next()`` on a one-worker loader whose batch is always ready."""
    loader = DataLoader(range(batches * batch_size + batch_size), batch_size=batch_size, num_workers=1, collate_fn=collate)
    it = iter(loader)
    next(it)
    times = []
    for _ in range(batches):
        time.sleep(0.1)  # the worker has the next batch (and the one after) ready by now
        t0 = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def count_tensors(x) -> int:
    if isinstance(x, torch.Tensor):
        return 1
    if isinstance(x, dict):
        return sum(count_tensors(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(count_tensors(v) for v in x)
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}; median next() of {args.batches} ready batches, {args.rounds} alternating rounds")
    print(f"{'batch':<24} {'tensors':>8} {'per descriptor ms':>18} {'one buffer ms':>14} {'ratio':>6}")
    for name, make in (("demo (3 modalities)", demo_batch), ("plain Llava", plain_batch)):
        per, one = [], []
        for r in range(args.rounds):
            order = ((make, per), (TransportCollator(make), one)) if r % 2 == 0 else ((TransportCollator(make), one), (make, per))
            for collate, out in order:
                out.append(receive_ms(collate, args.batches, args.batch_size))
        a, b = statistics.median(per), statistics.median(one)
        print(f"{name:<24} {count_tensors(make(list(range(args.batch_size)))):>8} {a:>18.2f} {b:>14.2f} {a / b:>5.2f}x")


if __name__ == "__main__":
    main()
