"""Demo data: deterministic synthetic clips (real H.264 MP4 files) with questions that need
several frames.

Each clip (16 frames of 32x32 at 8 fps, 2 s) holds a square that slides across the frame
(left, right, up or down), changes colour once on the way, while the frame's border flashes
white one to three times. Questions: which way the square moves, which colour it has first,
how many times the border flashes. Colour changes and flashes fall on 2-frame blocks, so the
8 uniformly sampled frames (one per block) see every event; a single (middle) frame cannot
tell the direction, the order of colours or the number of flashes.

Each split is balanced: every answer of every question occurs equally often (within one).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from omnimodal.demo import qa_record, write_jsonl

FRAMES, SIZE, FPS, BLOCK = 16, 32, 8, 2
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
DIRECTIONS = ("left", "right", "up", "down")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
QUESTIONS = {
    "direction": "Which way does the square move?",
    "first_colour": "Which colour is the square first?",
    "flashes": "How many times does the border flash?",
}
SPLITS = {"train": 600, "val": 60, "test": 150}


def flash_blocks(rng: random.Random, count: int) -> list[int]:
    """``count`` pairwise non-adjacent 2-frame blocks out of ``FRAMES // BLOCK``."""
    blocks = FRAMES // BLOCK
    while True:
        chosen = sorted(rng.sample(range(blocks), count))
        if all(b - a > 1 for a, b in zip(chosen, chosen[1:])):
            return chosen


def make_clip(rng: random.Random, direction: str, first: str, flashes: int) -> np.ndarray:
    """Render one clip ``[FRAMES, SIZE, SIZE, 3]`` uint8 with the given facts."""
    second = rng.choice([c for c in COLOURS if c != first])
    change = BLOCK * rng.choice((3, 4, 5))  # the colour changes at frame 6, 8 or 10
    lit = {BLOCK * b + k for b in flash_blocks(rng, flashes) for k in range(BLOCK)}
    background = np.array([rng.randint(0, 40) for _ in range(3)], np.uint8)
    half = rng.randint(3, 4)
    # One pixel a frame, through a random point at the middle frame: where the square stands in
    # the middle frame says nothing about the way it moves.
    middle = SIZE // 2 + rng.randint(-2, 2)
    sign = 1 if direction in ("right", "down") else -1
    across = rng.randint(10, SIZE - 11)
    clip = np.empty((FRAMES, SIZE, SIZE, 3), np.uint8)
    for t in range(FRAMES):
        frame = clip[t]
        frame[:] = background
        if t in lit:
            frame[:2], frame[-2:], frame[:, :2], frame[:, -2:] = 255, 255, 255, 255
        along = middle + sign * (t - FRAMES // 2)
        x, y = (along, across) if direction in ("left", "right") else (across, along)
        frame[y - half : y + half, x - half : x + half] = COLOURS[first if t < change else second]
    return clip


def _record(clip_path: str, kind: str, answer: str) -> dict:
    return qa_record({"type": "video", "path": clip_path}, QUESTIONS[kind], answer, kind)


def _plan(rng: random.Random, n: int) -> list[tuple[str, str, int]]:
    """Facts of ``n`` clips, each answer of each question within one of equally often (the 48
    combinations of direction, colour and count repeat every 48 clips)."""
    directions, colours, counts = list(DIRECTIONS), sorted(COLOURS), list(COUNT_WORDS)
    for values in (directions, colours, counts):
        rng.shuffle(values)
    plan = [(directions[i % 4], colours[(i + i // 4) % 4], counts[i % 3]) for i in range(n)]
    rng.shuffle(plan)
    return plan


def build(root: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, Path]:
    """Write MP4 clips and ``{train,val,test}.jsonl`` under ``root``; return the JSONL paths."""
    from omnimodal_video.decode import write_video

    root = Path(root)
    sizes = sizes or SPLITS
    out: dict[str, Path] = {}
    for split_index, (split, n) in enumerate(sorted(sizes.items())):
        rng = random.Random(f"{seed}-{split_index}-{split}")
        (root / "clips" / split).mkdir(parents=True, exist_ok=True)
        records = []
        for i, (direction, first, flashes) in enumerate(_plan(rng, n)):
            rel = f"clips/{split}/{i:05d}.mp4"
            # Near-lossless, one x264 thread and no B-frame reordering surprises: the same bytes every build.
            write_video(make_clip(rng, direction, first, flashes), root / rel, fps=FPS, source=rel, crf="12", threads="1")
            records.append(_record(rel, "direction", direction))
            records.append(_record(rel, "first_colour", first))
            records.append(_record(rel, "flashes", COUNT_WORDS[flashes]))
        rng.shuffle(records)
        path = root / f"{split}.jsonl"
        write_jsonl(path, records)
        out[split] = path
    return out
