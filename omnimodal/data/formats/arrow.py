"""Hugging Face datasets saved to disk, and Parquet files: rows read from memory-mapped Arrow.

``load_from_disk`` maps the saved Arrow files; a Parquet file is converted once into an
Arrow cache under ``HF_DATASETS_CACHE`` (``datasets``' own, reused while the file is
unchanged) and then mapped the same way, so a random access reads one row, not a row group.
Rows come back undecoded: an Image/Audio column gives ``{"bytes", "path"}``, which the
modality's ``load`` decodes in the data worker. Everything runs offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnimodal.compat import require_extra
from omnimodal.errors import DataError


def _datasets():
    require_extra("data", ("datasets", "pyarrow"), "reading Hugging Face datasets and Parquet")
    import datasets

    return datasets


def is_saved_dataset(path: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``)."""
    return path.is_dir() and any((path / n).is_file() for n in ("state.json", "dataset_dict.json"))


class ArrowRows:
    """Rows of one Arrow-backed dataset, each read as a plain dict on demand."""

    def __init__(self, path: Path, container: str):
        datasets = _datasets()
        self.path = Path(path)
        self.container = container
        if container == "Hugging Face dataset":
            if (self.path / "dataset_dict.json").is_file():
                splits = sorted(p.name for p in self.path.iterdir() if (p / "state.json").is_file())
                raise DataError(f"{self.path}: a dataset with splits {splits}; give one split's directory, e.g. {self.path / (splits or ['train'])[0]}")
            try:
                ds = datasets.load_from_disk(str(self.path))
            except (FileNotFoundError, ValueError) as exc:
                raise DataError(f"{self.path}: not a dataset saved with save_to_disk ({exc})") from exc
        else:
            try:
                ds = datasets.Dataset.from_parquet(str(self.path))
            except Exception as exc:  # pyarrow raises its own error types for broken files
                raise DataError(f"{self.path}: cannot read this Parquet file ({type(exc).__name__}: {exc})") from exc
        self.columns = list(ds.column_names)
        self.dataset = ds.with_format("arrow")  # pickles by file reference, so workers map it too

    def __len__(self) -> int:
        return len(self.dataset)

    def where(self, i: int) -> str:
        return f"{self.path}[{i}]"

    def row(self, i: int) -> dict[str, Any]:
        return self.dataset[i].to_pylist()[0]

    def sample(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` rows (to detect the layout from)."""
        return self.dataset[: min(n, len(self))].to_pylist()


def parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or the ``*.parquet`` files of a directory in name order."""
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise DataError(f"{path}: no *.parquet files in this directory")
        return files
    return [path]
