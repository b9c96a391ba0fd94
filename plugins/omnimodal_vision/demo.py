"""Demo data: a deterministic coloured-shapes image-QA set (colour, shape, count, position).

Every record asks one question. ``build(..., multi_turn=True)`` instead makes one training
conversation per image with all its questions (in a random order; validation and test are
unchanged). Measured on the default demo (README): at equal wall time it trained worse than
one question per record, so it is not the default.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from omnimodal.demo import conversation_record, qa_record, write_jsonl

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40), "purple": (150, 60, 200)}
SHAPES = ("circle", "square", "triangle")
QUADRANTS = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
QUESTIONS = {
    "colour": "What colour are the shapes?",
    "shape": "What shape are they?",
    "count": "How many shapes are there?",
    "position": "Where is the shape?",
}
SPLITS = {"train": 1000, "val": 100, "test": 250}
SIZE = 64


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, colour) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)


def make_image(rng: random.Random) -> tuple[Image.Image, dict]:
    """Draw 1-3 shapes of one colour and kind in distinct quadrants; return image and facts."""
    colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
    count = rng.choice((1, 2, 3))
    quads = rng.sample(sorted(QUADRANTS), count)
    bg = tuple(rng.randint(0, 40) for _ in range(3))
    image = Image.new("RGB", (SIZE, SIZE), bg)
    draw = ImageDraw.Draw(image)
    half = SIZE // 2
    for q in quads:
        qx, qy = QUADRANTS[q]
        r = rng.randint(7, 11)
        cx = qx * half + half // 2 + rng.randint(-3, 3)
        cy = qy * half + half // 2 + rng.randint(-3, 3)
        _draw(draw, shape, cx, cy, r, COLOURS[colour])
    return image, {"colour": colour, "shape": shape, "count": COUNT_WORDS[count], "position": quads[0] if count == 1 else None}


def _record(image_path: str, kind: str, answer: str) -> dict:
    return qa_record({"type": "image", "path": image_path}, QUESTIONS[kind], answer, kind)


def build(root: Path, seed: int = 0, sizes: dict[str, int] | None = None, multi_turn: bool = False) -> dict[str, Path]:
    """Write images and ``{train,val,test}.jsonl`` under ``root``; return the JSONL paths.

    ``multi_turn``: one training conversation per image with all its questions; ``False``:
    one training record per question (as validation and test always are).
    """
    sizes = sizes or SPLITS
    out: dict[str, Path] = {}
    for split_index, (split, n) in enumerate(sorted(sizes.items())):
        rng = random.Random(f"{seed}-{split_index}-{split}")
        order_rng = random.Random(f"{seed}-{split}-question-order")  # apart from rng: same images either way
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(n):
            image, facts = make_image(rng)
            rel = f"images/{split}/{i:05d}.png"
            image.save(root / rel)
            kinds = [kind for kind in QUESTIONS if facts[kind] is not None]
            if multi_turn and split == "train":
                order_rng.shuffle(kinds)
                records.append(conversation_record({"type": "image", "path": rel}, [(QUESTIONS[k], facts[k]) for k in kinds]))
            else:
                records += [_record(rel, kind, facts[kind]) for kind in kinds]
        rng.shuffle(records)
        path = root / f"{split}.jsonl"
        write_jsonl(path, records)
        out[split] = path
    return out
