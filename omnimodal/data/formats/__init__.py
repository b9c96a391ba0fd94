"""Data formats: each file is indexed once and its records read lazily, in one of five formats.

``data.format``: ``omnimodal`` (our JSONL), ``llava`` (LLaVA's JSON array or JSONL),
``messages`` (messages + media columns, as in TRL), ``hf`` (a dataset saved with
``save_to_disk``), ``parquet``; ``auto`` (the default) detects it. ``hf`` and ``parquet`` name
the container; the row layout inside (omnimodal, llava or messages) is detected from the
columns. JSON files may hold one array or one object per line.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

from omnimodal.data.formats.arrow import ArrowRows, is_saved_dataset, parquet_files
from omnimodal.data.formats.jsonl import JsonArray, JsonLines, omnimodal_layout
from omnimodal.data.formats.llava import llava_layout
from omnimodal.data.formats.messages import column_of, messages_layout
from omnimodal.data.formats.source import ReadContext, RecordSet, RecordSource, Rows
from omnimodal.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS = ("auto", "omnimodal", "llava", "messages", "hf", "parquet")
LAYOUTS = {"omnimodal": omnimodal_layout, "llava": llava_layout, "messages": messages_layout}
SNIFF_ROWS = 50

__all__ = ["FORMATS", "ReadContext", "RecordSet", "RecordSource", "open_file", "open_split"]

# Indexes of recently opened files, so the tokenizer pass and the data module share one scan.
_INDEX_CACHE: OrderedDict[tuple, Rows] = OrderedDict()
_INDEX_CACHE_SIZE = 8


def _container(path: Path, fmt: str) -> str:
    if is_saved_dataset(path):
        container = "hf"
    elif path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        container = "parquet"
    elif path.is_file():
        container = "json"
    elif path.is_dir():
        raise DataError(f"{path}: a directory that is neither a saved Hugging Face dataset nor holds *.parquet files")
    else:
        raise DataError(f"data file not found: {path}")
    if fmt in ("hf", "parquet") and container != fmt:
        raise DataError(f"data.format={fmt} but {path} is {'a JSON file' if container == 'json' else 'in format ' + container}")
    return container


def _json_rows(path: Path) -> Rows:
    """JSON array if the file starts with '[', else JSON Lines."""
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return JsonArray(path) if head[:1] == b"[" else JsonLines(path)


def _rows(path: Path, container: str) -> tuple[Rows, bool]:
    """The file's index (built now, or reused while the file is unchanged) and whether it is new."""
    stat = path.stat()
    key = (str(path.resolve()), container, stat.st_size, stat.st_mtime_ns)
    if key in _INDEX_CACHE:
        _INDEX_CACHE.move_to_end(key)
        return _INDEX_CACHE[key], False
    if container == "json":
        rows = _json_rows(path)
    elif container == "hf":
        rows = ArrowRows(path, "Hugging Face dataset")
    else:
        rows = ArrowRows(path, "Parquet")
    _INDEX_CACHE[key] = rows
    while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
        _INDEX_CACHE.popitem(last=False)
    return rows, True


def _sample(rows: Rows) -> list[Any]:
    if isinstance(rows, ArrowRows):
        return rows.sample(SNIFF_ROWS)
    out = []
    for i in range(min(SNIFF_ROWS, len(rows))):
        try:
            out.append(rows.row(i))
        except DataError:
            continue  # a broken row is reported when it is read; detection looks at the others
    return out


def detect_layout(rows: Rows, ctx: ReadContext) -> str:
    """omnimodal, llava or messages, from the keys of the first rows."""
    sample = [r for r in _sample(rows) if isinstance(r, dict)]
    if any("conversations" in r for r in sample):
        return "llava"
    columns = {column_of(t) for t in ctx.part_types}
    if any(columns & {k for k, v in r.items() if v is not None} for r in sample):
        return "messages"
    if any("messages" in r for r in sample):
        return "omnimodal"
    keys = sorted({k for r in sample for k in r})[:12]
    raise DataError(
        f"{rows.path}: cannot tell the format from the first records (keys {keys}); expected "
        "'messages' (omnimodal or messages) or 'conversations' (llava); set data.format to force one"
    )


def open_file(path: str | Path, fmt: str, ctx: ReadContext) -> list[RecordSource]:
    """Index one data path (a file, a saved dataset or a Parquet directory) into lazy sources."""
    if fmt not in FORMATS:
        raise ConfigError(f"data.format={fmt!r} is unknown. Valid formats: {', '.join(FORMATS)}.")
    path = Path(path).expanduser()
    container = _container(path, fmt)
    paths = parquet_files(path) if container == "parquet" else [path]
    sources = []
    for p in paths:
        rows, new = _rows(p, container)
        layout = fmt if fmt in LAYOUTS else detect_layout(rows, ctx) if len(rows) else "omnimodal"
        source = RecordSource(rows, LAYOUTS[layout], layout, ctx)
        if new:
            log.info("data: %s", source.describe())
        sources.append(source)
    return sources


def open_split(paths: list[Path], data_cfg: dict[str, Any], ctx: ReadContext) -> RecordSet:
    """The lazy records of one split's files (``format`` and ``on_error`` from ``data_cfg``)."""
    fmt = str(data_cfg.get("format") or "auto")
    sources = [s for p in paths for s in open_file(p, fmt, ctx)]
    records = RecordSet(sources, on_error=str(data_cfg.get("on_error") or "raise"))
    if not len(records):
        raise DataError(f"{', '.join(str(p) for p in paths)}: no records")
    return records
