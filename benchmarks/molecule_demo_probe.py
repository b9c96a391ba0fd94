"""Where the molecule demo learns slowly: the encoder, or the question-conditional read-out?

The default demo's molecule yes/no questions (nitrogen, halogen, hydroxyl, acid) stay near
chance for epochs inside the language model while the count questions (rings, size) train
at once. This script trains the demo's own molecule encoder and projector (the plugin's
default config: GINE width 128 with readout, resampler K=8 with pooled queries) on the demo's
training records without the language model, in two set-ups:

- ``per-question heads``: the mean of the K pseudo-tokens goes to one linear head per question,
  so which feature answers which question is given;
- ``shared head``: one MLP head reads the pseudo-tokens' mean plus a learned embedding of the
  question, so the head must learn that the question decides which feature matters, as the
  language model must.

Prints test accuracy per question after each epoch for both (same seed, same batches).

    python benchmarks/molecule_demo_probe.py [--epochs 3] [--root /tmp/omnimodal-molecule-demo]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from torch import nn

from omnimodal.projectors import build_projector


def load_split(path: Path) -> list[tuple[str, str, str]]:
    """``(smiles, kind, answer)`` of every record of a split."""
    rows = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        smiles = row["messages"][0]["content"][0]["smiles"]
        rows.append((smiles, row["kind"], row["messages"][1]["content"][0]["text"]))
    return rows


#: set-up name by ``shared``
LABELS = {False: "per-question heads", True: "shared head"}


class Probe(nn.Module):
    """The modality's encoder and projector, then per-question heads or one shared head."""

    def __init__(self, modality, width: int, n_kinds: int, n_answers: int, shared: bool):
        super().__init__()
        self.encoder = modality.build_encoder()
        self.projector = build_projector(modality.cfg["projector"], self.encoder.out_dim, width)
        self.n_kinds, self.n_answers, self.shared = n_kinds, n_answers, shared
        if shared:
            self.question = nn.Embedding(n_kinds, width)
            self.head = nn.Sequential(nn.Linear(width, 512), nn.SiLU(), nn.Linear(512, n_answers))
        else:
            self.head = nn.Linear(width, n_kinds * n_answers)

    def forward(self, features: dict[str, torch.Tensor], kinds: torch.Tensor) -> torch.Tensor:
        tokens, mask = self.projector(*self.encoder(**features))
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        if self.shared:
            return self.head(
                nn.functional.rms_norm(pooled, (pooled.shape[-1],)) + self.question(kinds)
            )
        logits = self.head(pooled).view(len(kinds), self.n_kinds, self.n_answers)
        return logits[torch.arange(len(kinds)), kinds]


def run(
    shared: bool, modality, width: int, train: list, test: list, epochs: int, seed: int = 0
) -> dict[str, float]:
    kinds = sorted({k for _, k, _ in train})
    answers = sorted({a for _, _, a in train})
    items: dict[str, object] = {}

    def batch(rows):
        for smiles, _, _ in rows:
            if smiles not in items:
                items[smiles] = modality.prepare(smiles, smiles).features
        features = modality.collate([items[s] for s, _, _ in rows])
        return (
            features,
            torch.tensor([kinds.index(k) for _, k, _ in rows]),
            torch.tensor([answers.index(a) for _, _, a in rows]),
        )

    torch.manual_seed(seed)
    model = Probe(modality, width, len(kinds), len(answers), shared)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    rng = random.Random(seed)
    acc: dict[str, float] = {}
    for epoch in range(epochs):
        model.train()
        order = list(train)
        rng.shuffle(order)
        for i in range(0, len(order), 32):
            features, k, y = batch(order[i : i + 32])
            loss = nn.functional.cross_entropy(model(features, k), y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
        hits: dict[str, list[bool]] = {}
        with torch.no_grad():
            for i in range(0, len(test), 64):
                rows = test[i : i + 64]
                features, k, y = batch(rows)
                for (_, kind, _), ok in zip(rows, (model(features, k).argmax(-1) == y).tolist()):
                    hits.setdefault(kind, []).append(ok)
        acc = {k: sum(v) / len(v) for k, v in sorted(hits.items())}
        print(
            f"  {LABELS[shared]}, epoch {epoch + 1}: " + ", ".join(f"{k} {v:.0%}" for k, v in acc.items()),
            flush=True,
        )
    return acc


def main() -> None:
    from omegaconf import OmegaConf
    from omnimodal_molecule.demo import build

    from omnimodal.api import compose
    from omnimodal.model import build_modalities

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--root", default="/tmp/omnimodal-molecule-demo")
    args = parser.parse_args()
    root = Path(args.root)
    if not (root / "train.jsonl").is_file():
        build(root, seed=0)
    cfg = OmegaConf.to_container(compose(["modalities=[molecule]"]), resolve=True)
    modality = build_modalities(cfg["modalities"])["molecule"]
    width = int(cfg["decoder"]["hidden_size"])  # the demo decoder's width: the pseudo-tokens' size
    train, test = load_split(root / "train.jsonl"), load_split(root / "test.jsonl")
    rows = {}
    for shared in (False, True):
        start = time.perf_counter()
        rows[LABELS[shared]] = run(
            shared, modality, width, train, test, args.epochs
        )
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    kinds = sorted(next(iter(rows.values())))
    print(f"\n{'after ' + str(args.epochs) + ' epochs':<20}" + "".join(f"{k:>16}" for k in kinds))
    for name, acc in rows.items():
        print(f"{name:<20}" + "".join(f"{acc[k]:>16.1%}" for k in kinds))


if __name__ == "__main__":
    main()
