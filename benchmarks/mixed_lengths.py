"""Padding and throughput on mixed-length data: packing off, length grouping, packing, both.

    python benchmarks/mixed_lengths.py [--rounds 5] [--records 192] [--batch-size 16] [--quick]

The data is made here: conversations whose answers are drawn from 1 to 200 words (about one
token each), with 0 to 3 media items each (64 px images for a ViT: 16 pseudo-tokens; tones of
0.3 to 3 s for the conv audio encoder: about 4 to 38 pseudo-tokens), under a tiny Llama decoder
(width 128, 4 layers). Each configuration trains one epoch over the same conversations through
``omnimodal``'s own data module and Lightning module (dataset, sampler, collator, packing
collator, the model's block mask), all in this one process, rounds alternating (the order
rotates each round); the figures are medians over the rounds.

``--max-length`` (320: just above the longest conversation) is the packed rows' length. The
block-diagonal mask is applied by SDPA over whole rows, so a packed row pays attention for all
its ``L x L`` positions: rows much longer than the conversations cost attention work that
grouping does not pay (``--max-length 512`` shows it).

Columns: padding share (pad tokens / all token positions in the rows fed to the model), non-pad
tokens/s over the epoch (loading, collation, forward, backward and optimizer step), the ratio to
``packing off`` (within each round, then the median), rows per step and seconds per step. Targets (issue 20): padding < 10% and
>= 1.3x non-pad tokens/s against packing off.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

WORDS = ("red green blue yellow circle square triangle small large left right top bottom near far the a "
         "shape colour bright dark and of is in on").split()
CONFIGS = {
    "packing off": {},
    "grouping": {"group_by_length": True},
    "packing": {"packing": True},
    "grouping+packing": {"group_by_length": True, "packing": True},
}


def make_data(root: Path, records: int, seed: int = 0) -> Path:
    """``records`` conversations: answers of 1-200 words, 0-3 images or tones each."""
    import soundfile as sf
    from PIL import Image

    from omnimodal.demo import write_jsonl

    rng = random.Random(seed)
    (root / "media").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(records):
        media = []
        for j in range(rng.randint(0, 3)):
            if rng.random() < 0.5:
                path = f"media/{i}_{j}.png"
                colour = tuple(rng.randrange(256) for _ in range(3))
                Image.new("RGB", (64, 64), colour).save(root / path)
                media.append({"type": "image", "path": path})
            else:
                path = f"media/{i}_{j}.wav"
                seconds, rate = rng.uniform(0.3, 3.0), 16000
                t = np.arange(int(seconds * rate)) / rate
                sf.write(root / path, (0.3 * np.sin(2 * np.pi * rng.uniform(200, 800) * t)).astype(np.float32), rate)
                media.append({"type": "audio", "path": path})
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 200)))
        question = "Describe " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) + "."
        rows.append({"messages": [
            {"role": "user", "content": [*media, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})
    return write_jsonl(root / "train.jsonl", rows)


def build_model(train: Path, width: int, layers: int):
    from omnimodal.data.dataset import training_texts
    from omnimodal.data.formats import ReadContext, open_split
    from omnimodal.model import OmniModel

    torch.manual_seed(0)
    cfg = {
        "decoder": {"kind": "scratch", "architecture": "llama", "hidden_size": width, "intermediate_size": 2 * width,
                    "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 4,
                    "max_position_embeddings": 512, "tokenizer": {"kind": "bpe", "vocab_size": 600}},
        "modalities": {
            "vision": {"encoder": {"kind": "vit", "patch_size": 16, "width": 64, "depth": 1, "heads": 2, "features": "patch"},
                       "projector": {"kind": "mlp", "hidden_dim": None}, "image_size": 64, "train_encoder": True},
            "audio": {"encoder": {"kind": "conv", "width": 64, "depth": 1, "heads": 2, "mlp_ratio": 2},
                      "projector": {"kind": "pool", "stride": 2, "hidden_dim": None},
                      "sample_rate": 16000, "max_duration": 30.0, "n_mels": 80, "train_encoder": True},
        },
    }
    records = open_split([train], {}, ReadContext.for_part_types({"image": "vision", "audio": "audio"}))
    return OmniModel.from_config(cfg, texts=list(training_texts(records)))


def epoch(model, train: Path, data: dict[str, Any], batch_size: int, workers: int, max_length: int) -> dict[str, float]:
    """One training epoch through omnimodal's data and Lightning modules; what the rows held."""
    import lightning as L

    from omnimodal.training.datamodule import OmniDataModule
    from omnimodal.training.module import OmniLightningModule

    cfg = {"batch_size": batch_size, "num_workers": workers, "max_length": max_length, "seed": 0, **data}
    dm = OmniDataModule(cfg, {"train": [train], "val": [], "test": []}, model.tokenizer, model.modalities, model.placeholder_ids)

    class Meter(L.Callback):
        steps = rows = tokens = positions = 0

        def on_train_epoch_start(self, trainer, module):
            self.start = time.perf_counter()

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.steps += 1
            self.rows += batch["input_ids"].shape[0]
            self.tokens += int(batch["attention_mask"].sum())
            self.positions += batch["input_ids"].numel()

        def on_train_epoch_end(self, trainer, module):
            self.seconds = time.perf_counter() - self.start

    meter = Meter()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[meter])
    trainer.fit(OmniLightningModule(model, {"lr": 1e-4, "warmup_ratio": 0.0}), datamodule=dm)
    return {"seconds": meter.seconds, "steps": meter.steps, "rows": meter.rows, "tokens": meter.tokens, "positions": meter.positions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=320,
                        help="data.max_length, the length of a packed row (default: just above the longest conversation, 281)")
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers (0: loading counts in the step)")
    parser.add_argument("--width", type=int, default=128, help="decoder width (intermediate: twice that)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 64 conversations (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.records = 2, 64

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        train = make_data(Path(tmp), args.records)
        model = build_model(train, args.width, args.layers)
        from omnimodal.data.dataset import ConversationDataset
        from omnimodal.data.formats import ReadContext, open_split

        ds = ConversationDataset(open_split([train], {}, ReadContext.for_part_types({"image": "vision", "audio": "audio"})),
                                 model.tokenizer, model.modalities, model.placeholder_ids, args.max_length)
        from omnimodal.data.lengths import estimate_lengths

        start = time.perf_counter()
        lengths = [len(ds[i]["input_ids"]) for i in range(len(ds))]
        sample_ms = (time.perf_counter() - start) / len(ds) * 1e3
        start = time.perf_counter()
        gap = np.asarray(lengths) - estimate_lengths(ds)
        print(f"length estimates (data.group_by_length): {(time.perf_counter() - start) / len(ds) * 1e3:.2f} ms per record "
              f"(loading a sample: {sample_ms:.2f} ms); real minus estimate: {gap.min()} to {gap.max()} tokens")
        lengths.sort()
        print(f"{args.records} conversations, tokens each (media included): min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
              f"max {lengths[-1]}; decoder width {args.width} x {args.layers} layers, batch {args.batch_size}, max_length {args.max_length}, workers {args.workers}, "
              f"{args.rounds} rounds; torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        epoch(model, train, {}, args.batch_size, args.workers, args.max_length)  # warm-up (imports, allocator)
        names = list(CONFIGS)
        runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                runs[name].append(epoch(model, train, CONFIGS[name], args.batch_size, args.workers, args.max_length))
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {runs[n][-1]['seconds']:.1f}s" for n in names), flush=True)

    def rate(run):
        return run["tokens"] / run["seconds"]

    print(f"\nmixed-length training, one epoch of {args.records} conversations, median of {args.rounds} rounds "
          f"({platform.machine()}, {os.cpu_count()} cores)")
    head = f"{'':18}{'padding':>9}{'non-pad tok/s':>15}{'ratio':>8}{'rows/step':>11}{'s/step':>8}"
    print(head)
    print("-" * len(head))
    for name in names:
        rs = runs[name]
        tok_s = statistics.median(rate(x) for x in rs)
        # The ratio is taken within each round (the machine's load drifts between rounds), then the median.
        ratio = statistics.median(rate(x) / rate(b) for x, b in zip(rs, runs["packing off"]))
        padding = 1 - rs[-1]["tokens"] / rs[-1]["positions"]
        rows = rs[-1]["rows"] / rs[-1]["steps"]
        step_s = statistics.median(x["seconds"] / x["steps"] for x in rs)
        print(f"{name:18}{padding:>8.1%}{tok_s:>15.0f}{ratio:>7.2f}x{rows:>11.1f}{step_s:>8.3f}")


if __name__ == "__main__":
    main()
