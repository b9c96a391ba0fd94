"""Answer extraction and metrics, as the benchmark papers define them (pure Python, no torch).

Each metric scores one prediction against an item's references and returns a number in
[0, 1]; a task's score is the mean over its items. ``yes_no`` also reports precision, recall
and F1 with "yes" as the positive class (POPE's convention).

- ``exact_match``: normalised prediction equals any normalised reference.
- ``vqa_accuracy``: ``min(#references equal to the prediction / 3, 1)`` (VQAv2's formula over
  the human answers, without the 10-choose-9 averaging of the official script).
- ``multiple_choice``: the extracted option letter equals the gold letter.
- ``numeric``: the first number in the prediction is within ``tolerance`` (relative) of a
  numeric reference; a non-numeric reference falls back to exact match (ChartQA's relaxed
  accuracy, tolerance 0.05).
- ``yes_no``: the extracted yes/no equals the reference.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

METRICS = ("exact_match", "vqa_accuracy", "multiple_choice", "numeric", "yes_no")
LETTERS = string.ascii_uppercase

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
}
ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]")  # a decimal point stays
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def normalise_answer(text: str) -> str:
    """Lower-case; drop punctuation and articles; number words -> digits; collapse spaces.

    A full stop or comma inside a number is kept (``"3.5"``, ``"1,000"`` -> ``"1000"``).
    """
    text = text.strip().lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = _PUNCT.sub(" ", text)
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(words)


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference."""
    pred = normalise_answer(prediction)
    return float(any(pred == normalise_answer(r) for r in references))


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """``min(#references matching the prediction / 3, 1)`` after normalisation."""
    pred = normalise_answer(prediction)
    return min(sum(pred == normalise_answer(r) for r in references) / 3.0, 1.0)


def parse_number(text: str) -> float | None:
    """The first number written in ``text`` (digits or a number word; ``%`` ignored), or None."""
    match = _NUMBER.search(text)
    if match:
        return float(match.group().replace(",", ""))
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in NUMBER_WORDS:
            return float(NUMBER_WORDS[word])
    return None


def numeric_match(prediction: str, references: Sequence[str], tolerance: float = 0.05) -> float:
    """1.0 when the prediction's number is within ``tolerance`` of a reference's (relative)."""
    pred = parse_number(prediction)
    for ref in references:
        target = parse_number(ref) if _NUMBER.fullmatch(ref.strip().rstrip("%").strip()) else None
        if target is None:
            if exact_match(prediction, [ref]):
                return 1.0
        elif pred is not None and abs(pred - target) <= tolerance * abs(target) + (0.0 if target else 1e-12):
            return 1.0
    return 0.0


def extract_yes_no(text: str) -> str | None:
    """``"yes"`` / ``"no"`` from the first such word of the answer, or None."""
    for word in normalise_answer(text).split():
        if word in ("yes", "true", "correct"):
            return "yes"
        if word in ("no", "not", "false", "incorrect"):
            return "no"
    return None


def yes_no_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the extracted yes/no equals the first reference's."""
    got = extract_yes_no(prediction)
    return float(got is not None and got == extract_yes_no(references[0]))


_LETTER_PATTERNS = (
    r"^\(?([A-Z])\)?(?:[.:)\]]|\s|$)",  # "B", "(B)", "B.", "B) cat", "B: cat"
    r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\)?(?:[.:)\]]|\s|$)",  # "The answer is B"
    r"\(([A-Z])\)",  # "... (B) ..."
)


def extract_letter(text: str, options: Sequence[str]) -> int | None:
    """The chosen option's index from a free-text answer, or None.

    An answer that is exactly one option's text (normalised) picks that option; otherwise
    ``"B"``, ``"(B)"``, ``"B. cat"``, ``"The answer is B"``, ``"answer: (b)"`` are read as letters.
    Letters past the options are refused.
    """
    n = len(options)
    stripped = text.strip()
    norm = normalise_answer(stripped)
    hits = [k for k, option in enumerate(options) if norm and normalise_answer(option) == norm]
    if len(hits) == 1:  # "A dog" is the option "a dog", not the letter A
        return hits[0]
    for i, pattern in enumerate(_LETTER_PATTERNS):
        flags = re.IGNORECASE if i == 1 else 0
        for match in re.finditer(pattern, stripped if i else stripped.upper() if len(stripped) <= 3 else stripped, flags):
            index = LETTERS.find(match.group(1).upper())
            if 0 <= index < n:
                return index
    return None


def multiple_choice_match(choice: int | None, gold: int) -> float:
    """1.0 when the chosen option index is the gold one."""
    return float(choice is not None and choice == gold)


def yes_no_summary(predictions: Sequence[str | None], references: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive class "yes") and the fraction answered yes."""
    pairs = list(zip(predictions, references))
    tp = sum(p == "yes" and r == "yes" for p, r in pairs)
    fp = sum(p == "yes" and r == "no" for p, r in pairs)
    fn = sum(p != "yes" and r == "yes" for p, r in pairs)
    n = len(pairs) or 1
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": sum(p == r for p, r in pairs) / n,
        "precision": precision, "recall": recall, "f1": f1,
        "yes_ratio": sum(p == "yes" for p, _ in pairs) / n,
    }


def score_text(metric: str, prediction: str, references: Sequence[str], tolerance: float = 0.05) -> float:
    """Score a free-text prediction with one of the open-answer metrics."""
    if metric == "exact_match":
        return exact_match(prediction, references)
    if metric == "vqa_accuracy":
        return vqa_accuracy(prediction, references)
    if metric == "numeric":
        return numeric_match(prediction, references, tolerance)
    if metric == "yes_no":
        return yes_no_match(prediction, references)
    raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
