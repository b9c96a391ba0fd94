"""Demo data: synthetic 3-channel signals (100 Hz, 1-2 s) whose questions need the signal.

Four question kinds, one signal each: is the trend going up or down; which channel has the
spike; is the period short or long; how many peaks are there. Every answer of a kind occurs
equally often (within one) in every split, so the blind baseline (the most frequent training
answer per question) is 1/2 on trend and period, 1/3 on spike and peaks: about 42% overall.
Signals are saved as ``.npy`` files ``[channels, samples]``; every 4th is inline in the JSONL.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

RATE = 100
CHANNELS = 3
QUESTIONS = {
    "trend": "Is the trend going up or down?",
    "spike": "Which channel has the spike?",
    "period": "Is the period short or long?",
    "peaks": "How many peaks are there?",
}
ANSWERS = {
    "trend": ["up", "down"],
    "spike": ["first", "second", "third"],
    "period": ["short", "long"],
    "peaks": ["one", "two", "three"],
}
SPLITS = {"train": 1200, "val": 80, "test": 400}


def make_signal(rng: random.Random, kind: str, answer: str) -> np.ndarray:
    """One ``[3, T]`` float32 signal (T in [100, 200]) whose ``kind`` question has ``answer``."""
    gen = np.random.default_rng(rng.getrandbits(32))
    n = rng.randint(100, 200)
    t = np.arange(n) / n
    x = 0.25 * gen.standard_normal((CHANNELS, n))
    if kind == "trend":
        slope = rng.uniform(1.5, 3.0) * (1 if answer == "up" else -1)
        x += slope * t + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 3) * t + gen.uniform(0, 6, (CHANNELS, 1)))
    elif kind == "spike":
        x += 0.3 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + gen.uniform(0, 6, (CHANNELS, 1)))
        at = rng.randint(10, n - 10)
        x[ANSWERS["spike"].index(answer), at : at + 3] += rng.uniform(4.0, 6.0)
    elif kind == "period":
        period = rng.uniform(6, 10) if answer == "short" else rng.uniform(40, 70)
        x += np.sin(2 * np.pi * np.arange(n) / period + gen.uniform(0, 6, (CHANNELS, 1)))
    else:  # peaks: 1-3 separated bumps on every channel
        count = ANSWERS["peaks"].index(answer) + 1
        slots = sorted(rng.sample(range(count + 1, 2 * count + 2), count))
        for s in slots:
            centre = n * (s - count) / (count + 2) + rng.uniform(-4, 4)
            x += rng.uniform(1.5, 2.5) * np.exp(-0.5 * ((np.arange(n) - centre) / rng.uniform(3, 5)) ** 2)
    return x.astype(np.float32)


def _plan(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """``n`` (kind, answer) pairs: kinds in turn, each kind's answers in turn (balanced)."""
    kinds = list(QUESTIONS)
    seen = {k: 0 for k in kinds}
    plan = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        plan.append((kind, ANSWERS[kind][seen[kind] % len(ANSWERS[kind])]))
        seen[kind] += 1
    rng.shuffle(plan)
    return plan


def build(root: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, Path]:
    """Write signals and ``{train,val,test}.jsonl`` under ``root``; return the JSONL paths."""
    root = Path(root)
    out: dict[str, Path] = {}
    for split, n in sorted((sizes or SPLITS).items()):
        rng = random.Random(f"{seed}-{split}")
        (root / "series" / split).mkdir(parents=True, exist_ok=True)
        lines = []
        for i, (kind, answer) in enumerate(_plan(rng, n)):
            signal = make_signal(rng, kind, answer)
            if i % 4 == 3:  # inline values, as a JSONL file may hold them
                part = {"type": "timeseries", "values": np.round(signal, 4).tolist(), "rate": RATE}
            else:
                rel = f"series/{split}/{i:05d}.npy"
                np.save(root / rel, signal)
                part = {"type": "timeseries", "path": rel}
            user = {"role": "user", "content": [part, {"type": "text", "text": QUESTIONS[kind]}]}
            lines.append({"kind": kind, "messages": [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})
        out[split] = root / f"{split}.jsonl"
        out[split].write_text("".join(json.dumps(r) + "\n" for r in lines))
    return out
