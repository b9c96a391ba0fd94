"""Reading series from files: .npy (``[channels, samples]``) and .csv (a row per sample)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omnimodal.errors import MediaError


def bad(source: str, why: str):
    raise MediaError(f"{source}: {why}")


def read_file(path: Path, source: str) -> np.ndarray:
    """A .npy file (``[channels, samples]``) or a .csv (a row per sample, a column per channel)."""
    if not path.is_file():
        bad(source, f"time-series file not found: {path}")
    if path.suffix.lower() not in (".npy", ".csv"):
        bad(source, f"{path.name}: time-series files are .npy or .csv")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        if rows and not _numeric(rows[0]):
            rows = rows[1:]  # a header line
        return np.loadtxt(rows, delimiter=",", ndmin=2, dtype=np.float32).T
    except (OSError, ValueError) as exc:
        raise MediaError(f"{source}: {path.name} is not a readable time series ({exc})") from exc


def _numeric(line: str) -> bool:
    try:
        [float(v) for v in line.split(",")]
    except ValueError:
        return False
    return True
