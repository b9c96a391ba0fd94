"""Encoder-only check of the video demo: can the demo's video encoder answer the questions from
8 sampled frames, and not from the middle frame alone?

A cheap stand-in for the full demo (``omnimodal train modalities=[video]`` and its single-frame
baseline ``modalities.video.num_frames=1``) when the machine is too busy for it: the same data
(the plugin's demo builder), the same preprocessing and the demo's video encoder
(ViT width 64, 8 frames) with its 4x4 patch grid pooled to 2x2 (stride 2: the MLP reads the
answers even from that; the language model did not, so the plugin's default is now stride 1), but an MLP over the
flattened pseudo-token features with one classification head per question in place of the
language model. Prints test accuracy per question for 8 frames, the middle frame only, and the
blind baseline (the most common training answer).

    python benchmarks/video_demo_probe.py [--epochs 8] [--root /tmp/omnimodal-video-demo]
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch
from torch import nn


def load_split(path: Path, modality) -> tuple[torch.Tensor, dict[str, list[str]]]:
    """Pixels of every clip of a split (in first-seen order) and each question's answers."""
    answers: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        clip = row["messages"][0]["content"][0]["path"]
        answers[clip][row["kind"]] = row["messages"][1]["content"][0]["text"]
    clips = sorted(answers)
    pixels = torch.stack([modality.prepare(path.parent / c, c).features["pixel_values"] for c in clips])
    kinds = sorted(next(iter(answers.values())))
    return pixels, {k: [answers[c][k] for c in clips] for k in kinds}


class Probe(nn.Module):
    def __init__(self, encoder: nn.Module, length: int, classes: dict[str, list[str]]):
        super().__init__()
        self.encoder = encoder
        dim = encoder.out_dim * length
        self.mlp = nn.Sequential(nn.Linear(dim, 256), nn.GELU())
        self.heads = nn.ModuleDict({k: nn.Linear(256, len(v)) for k, v in classes.items()})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = torch.ones(pixels.shape[:2], dtype=torch.bool)
        features, _ = self.encoder(pixels, mask)
        hidden = self.mlp(features.flatten(1))
        return {k: head(hidden) for k, head in self.heads.items()}


def run(num_frames: int, root: Path, epochs: int, seed: int = 0) -> dict[str, float]:
    from omnimodal.model import build_modalities

    cfg = {
        "encoder": {"kind": "vit", "patch_size": 8, "width": 64, "depth": 2, "heads": 4, "features": "patch"},
        "image_size": 32, "num_frames": num_frames, "max_frames": 32, "spatial_pool": 2, "temporal_pool": 1,
    }
    modality = build_modalities({"video": cfg})["video"]
    x_train, y_train = load_split(root / "train.jsonl", modality)
    x_test, y_test = load_split(root / "test.jsonl", modality)
    classes = {k: sorted(set(v)) for k, v in y_train.items()}
    t_train = {k: torch.tensor([classes[k].index(a) for a in v]) for k, v in y_train.items()}
    t_test = {k: torch.tensor([classes[k].index(a) for a in v]) for k, v in y_test.items()}
    torch.manual_seed(seed)
    model = Probe(modality.build_encoder(), modality.encoder_length({"num_frames": num_frames}), classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    n = x_train.shape[0]
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(n).split(32):
            out = model(x_train[idx])
            loss = sum(nn.functional.cross_entropy(out[k], t_train[k][idx]) for k in out)
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = evaluate(model, x_test, t_test)
        print(f"  {num_frames} frame(s), epoch {epoch + 1}: " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items()), flush=True)
    return acc


def evaluate(model: Probe, x: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """Test accuracy per question."""
    model.eval()
    with torch.no_grad():
        out = model(x)
    return {k: float((out[k].argmax(1) == targets[k]).float().mean()) for k in out}


def main() -> None:
    from omnimodal_video.demo import build

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--root", default="/tmp/omnimodal-video-demo")
    args = parser.parse_args()
    root = Path(args.root)
    if not (root / "train.jsonl").is_file():
        build(root, seed=0)
    rows = {}
    for frames in (8, 1):
        start = time.perf_counter()
        rows[f"{frames} frame(s)"] = run(frames, root, args.epochs)
        print(f"{frames} frame(s): {time.perf_counter() - start:.0f} s", flush=True)
    answers = collections.defaultdict(list)
    for line in (root / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        answers[row["kind"]].append(row["messages"][1]["content"][0]["text"])
    majority = {k: collections.Counter(v).most_common(1)[0][0] for k, v in answers.items()}
    test = collections.defaultdict(list)
    for line in (root / "test.jsonl").read_text().splitlines():
        row = json.loads(line)
        test[row["kind"]].append(row["messages"][1]["content"][0]["text"] == majority[row["kind"]])
    rows["blind"] = {k: sum(v) / len(v) for k, v in test.items()}
    kinds = sorted(rows["blind"])
    print(f"\n{'':<12}" + "".join(f"{k:>14}" for k in kinds) + f"{'mean':>8}")
    for name, acc in rows.items():
        print(f"{name:<12}" + "".join(f"{acc[k]:>14.1%}" for k in kinds) + f"{sum(acc.values()) / len(acc):>8.1%}")


if __name__ == "__main__":
    main()
