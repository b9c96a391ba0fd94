"""Demo data: a deterministic tone-sequence audio-QA set (count, pitch, contour, loudness).

Each clip (16 kHz mono WAV, at most 2 s) holds one to three beeps of one style: steady tones,
all high or all low, or glides, all rising or all falling; the whole clip is loud or quiet.
Every clip gives three questions: how many beeps, loud or quiet, and either the pitch (steady
clips) or the contour (glides). Each split is balanced: every answer of every question occurs
equally often (within one), so the blind baseline is 1/3 on counts and 1/2 elsewhere.

Every record asks one question. ``build(..., multi_turn=True)`` instead makes one training
conversation per clip with its three questions (in a random order; validation and test are
unchanged); it is not the default (see the vision demo's note).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np

from omnimodal.demo import conversation_record, qa_record, write_jsonl

SAMPLE_RATE = 16000
MAX_SECONDS = 2.0
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
QUESTIONS = {
    "count": "How many beeps are there?",
    "pitch": "Is the tone high or low?",
    "contour": "Does the pitch rise or fall?",
    "loudness": "Is the sound loud or quiet?",
}
SPLITS = {"train": 1000, "val": 100, "test": 250}
LOW_HZ = (250.0, 500.0)
HIGH_HZ = (1400.0, 2400.0)
LOUD = (0.3, 0.6)
QUIET = (0.02, 0.05)
NOISE = 0.002
# (style, value): steady tones are high or low, glides rise or fall.
STYLES = (("pitch", "high"), ("pitch", "low"), ("contour", "rising"), ("contour", "falling"))


def _beep(rng: random.Random, kind: str, value: str, base: float) -> np.ndarray:
    """One beep with 10 ms raised-cosine edges: a steady tone or a log-frequency glide."""
    if kind == "pitch":
        seconds = rng.uniform(0.12, 0.25)
        n = int(seconds * SAMPLE_RATE)
        freq = np.full(n, base * rng.uniform(0.97, 1.03))
    else:
        seconds = rng.uniform(0.22, 0.35)
        n = int(seconds * SAMPLE_RATE)
        low, high = rng.uniform(*LOW_HZ), rng.uniform(*HIGH_HZ)
        start, end = (low, high) if value == "rising" else (high, low)
        freq = np.exp(np.linspace(math.log(start), math.log(end), n))
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi)
    edge = int(0.01 * SAMPLE_RATE)
    env = np.ones(n)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, edge))
    env[:edge], env[-edge:] = ramp, ramp[::-1]
    return np.sin(phase) * env


def make_clip(rng: random.Random, count: int, kind: str, value: str, loudness: str) -> np.ndarray:
    """Synthesise one clip (float32, 16 kHz, <= 2 s) with the given facts."""
    base = rng.uniform(*(HIGH_HZ if value == "high" else LOW_HZ))
    amplitude = rng.uniform(*(LOUD if loudness == "loud" else QUIET))
    parts = [np.zeros(int(rng.uniform(0.05, 0.25) * SAMPLE_RATE))]
    for i in range(count):
        if i:
            parts.append(np.zeros(int(rng.uniform(0.1, 0.25) * SAMPLE_RATE)))
        parts.append(amplitude * _beep(rng, kind, value, base))
    parts.append(np.zeros(int(rng.uniform(0.05, 0.15) * SAMPLE_RATE)))
    wave = np.concatenate(parts)[: int(MAX_SECONDS * SAMPLE_RATE)]
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, NOISE, wave.shape)
    return (wave + noise).astype(np.float32)


def _record(clip_path: str, kind: str, answer: str) -> dict:
    return qa_record({"type": "audio", "path": clip_path}, QUESTIONS[kind], answer, kind)


def _plan(rng: random.Random, n: int) -> list[tuple[int, tuple[str, str], str]]:
    """Facts of ``n`` clips: each answer of each question within one of equally often.

    Clip ``i`` takes count ``i % 3``, style ``i % 4`` and loudness ``(i + i // 4) % 2`` of
    shuffled value lists: the 24 combinations repeat every 24 clips and every prefix is balanced.
    """
    counts, styles, levels = list(COUNT_WORDS), list(STYLES), ["loud", "quiet"]
    for values in (counts, styles, levels):
        rng.shuffle(values)
    plan = [(counts[i % 3], styles[i % 4], levels[(i + i // 4) % 2]) for i in range(n)]
    rng.shuffle(plan)
    return plan


def build(root: Path, seed: int = 0, sizes: dict[str, int] | None = None, multi_turn: bool = False) -> dict[str, Path]:
    """Write WAV clips and ``{train,val,test}.jsonl`` under ``root``; return the JSONL paths.

    ``multi_turn``: one training conversation per clip with its three questions; ``False``:
    one training record per question (as validation and test always are).
    """
    import soundfile as sf

    root = Path(root)
    sizes = sizes or SPLITS
    out: dict[str, Path] = {}
    for split_index, (split, n) in enumerate(sorted(sizes.items())):
        rng = random.Random(f"{seed}-{split_index}-{split}")
        order_rng = random.Random(f"{seed}-{split}-question-order")  # apart from rng: same clips either way
        (root / "clips" / split).mkdir(parents=True, exist_ok=True)
        records = []
        for i, (count, (kind, value), loudness) in enumerate(_plan(rng, n)):
            rel = f"clips/{split}/{i:05d}.wav"
            sf.write(root / rel, make_clip(rng, count, kind, value, loudness), SAMPLE_RATE, subtype="PCM_16")
            facts = [("count", COUNT_WORDS[count]), (kind, value), ("loudness", loudness)]
            if multi_turn and split == "train":
                order_rng.shuffle(facts)
                records.append(conversation_record({"type": "audio", "path": rel}, [(QUESTIONS[k], a) for k, a in facts]))
            else:
                records += [_record(rel, k, a) for k, a in facts]
        rng.shuffle(records)
        path = root / f"{split}.jsonl"
        write_jsonl(path, records)
        out[split] = path
    return out
