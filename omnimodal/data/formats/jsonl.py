"""JSON files indexed by byte offset: JSON Lines, and large JSON arrays by a streaming scanner.

Both index a file in one pass that keeps only offsets and line numbers (numpy arrays, so
forked data workers share them without copy-on-write churn); a row is read back by seeking.
Also the omnimodal layout: ``{"messages": [...], "kind": optional}`` with typed media parts.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from omnimodal.data.formats.source import ReadContext
from omnimodal.data.records import Record, SkipReport, check_kind, validate_messages
from omnimodal.errors import DataError

_WS = re.compile(r"[ \t\n\r]*")


class _Seeker:
    """Reads byte ranges of one file; reopened after a fork (one handle per process)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None
        self._pid = None

    def read(self, start: int, length: int | None = None) -> bytes:
        if self._file is None or self._pid != os.getpid():
            self._file = open(self.path, "rb")  # noqa: SIM115 - kept open for the next read
            self._pid = os.getpid()
        self._file.seek(start)
        return self._file.readline() if length is None else self._file.read(length)

    def __getstate__(self):
        return {"path": self.path, "_file": None, "_pid": None}


def _decode(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))  # -sig: a BOM before the first row
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None


class JsonLines:
    """Index of a JSON Lines file: the offset and line number of each non-blank line."""

    container = "JSON Lines"

    def __init__(self, path: Path):
        self.path = Path(path)
        offsets, lines = array("q"), array("q")
        pos = 0
        with self.path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    offsets.append(pos)
                    lines.append(lineno)
                pos += len(line)
        self.offsets = np.frombuffer(offsets, dtype=np.int64).copy()
        self.lines = np.frombuffer(lines, dtype=np.int64).copy()
        self._seeker = _Seeker(self.path)

    def __len__(self) -> int:
        return len(self.offsets)

    def where(self, i: int) -> str:
        return f"{self.path}:{int(self.lines[i])}"

    def row(self, i: int) -> Any:
        return _decode(self._seeker.read(int(self.offsets[i])), self.where(i))


class JsonArray:
    """Index of a file holding one JSON array: each element's byte range and starting line.

    A streaming scanner reads the file in chunks and lets ``json``'s C decoder find where each
    element ends, so memory stays at one chunk (plus the largest element) whatever the file size.
    Broken JSON stops the scan with ``file:line``: past it, the array cannot be split reliably.
    """

    container = "JSON array"
    chunk = 1 << 20
    max_element = 256 << 20

    def __init__(self, path: Path):
        self.path = Path(path)
        starts, ends, lines = array("q"), array("q"), array("q")
        for start, end, line in self._scan():
            starts.append(start)
            ends.append(end)
            lines.append(line)
        self.starts = np.frombuffer(starts, dtype=np.int64).copy()
        self.ends = np.frombuffer(ends, dtype=np.int64).copy()
        self.lines = np.frombuffer(lines, dtype=np.int64).copy()
        # A compact array sits on one line: then an element is named by its index instead.
        self.by_index = len(self.lines) > 1 and int(self.lines[-1]) - int(self.lines[0]) < len(self.lines) - 1
        self._seeker = _Seeker(self.path)

    def _scan(self):
        decoder = json.JSONDecoder()
        utf8 = codecs.getincrementaldecoder("utf-8")()
        buf, pos, eof = "", 0, False
        mark, mark_byte, mark_line = 0, 0, 1  # buf[mark] sits at byte mark_byte, line mark_line

        with self.path.open("rb") as f:
            if f.read(3) == codecs.BOM_UTF8:
                mark_byte = 3
            else:
                f.seek(0)

            def more() -> None:
                nonlocal buf, eof
                data = f.read(self.chunk)
                try:
                    buf += utf8.decode(data, final=not data)
                except UnicodeDecodeError as exc:
                    raise DataError(f"{self.path}: not UTF-8 text ({exc.reason})") from None
                eof = not data

            def advance(to: int) -> tuple[int, int]:
                nonlocal mark, mark_byte, mark_line
                piece = buf[mark:to]
                mark_byte += len(piece.encode("utf-8"))
                mark_line += piece.count("\n")
                mark = to
                return mark_byte, mark_line

            def skip_ws() -> str:
                nonlocal pos
                while True:
                    pos = _WS.match(buf, pos).end()
                    if pos < len(buf) or eof:
                        return buf[pos] if pos < len(buf) else ""
                    more()

            def fail(message: str, at: int) -> DataError:
                _, line = advance(max(at, mark))
                return DataError(f"{self.path}:{line}: {message}")

            more()
            if skip_ws() != "[":
                raise fail("expected a JSON array ('[') here", pos)
            pos += 1
            if skip_ws() == "]":
                return
            while True:
                if not skip_ws():
                    raise fail("the JSON array is not closed (missing ']')", pos)
                try:
                    _, end = decoder.raw_decode(buf, pos)
                    if end == len(buf) and not eof:
                        raise ValueError("element may continue in the next chunk")
                except ValueError as exc:
                    if not eof and len(buf) - pos < self.max_element:
                        more()
                        continue
                    if isinstance(exc, json.JSONDecodeError):
                        raise fail(f"invalid JSON in the array ({exc.msg}); the records after it cannot be read", exc.pos) from None
                    raise
                start_byte, start_line = advance(pos)
                end_byte, _ = advance(end)
                yield start_byte, end_byte, start_line
                pos = end
                sep = skip_ws()
                if sep == "]":
                    return
                if sep != ",":
                    raise fail(f"expected ',' or ']' after an array element, found {sep[:1]!r}", pos)
                pos += 1
                if mark > self.chunk:  # drop what is consumed; keep the buffer one chunk or so
                    buf, pos, mark = buf[mark:], pos - mark, 0

    def __len__(self) -> int:
        return len(self.starts)

    def where(self, i: int) -> str:
        return f"{self.path}[{i}]" if self.by_index else f"{self.path}:{int(self.lines[i])}"

    def row(self, i: int) -> Any:
        start = int(self.starts[i])
        return _decode(self._seeker.read(start, int(self.ends[i]) - start), self.where(i))


def omnimodal_layout(obj: Any, where: str, ctx: ReadContext) -> tuple[list[dict[str, Any]], Any]:
    """omnimodal's own layout: ``{"messages": [...], "kind": ...}``; media parts carry their data."""
    if not isinstance(obj, dict) or "messages" not in obj:
        raise DataError(f"{where}: a record must be an object with 'messages'")
    messages = obj["messages"]
    if isinstance(messages, list):
        for i, msg in enumerate(messages):
            content = msg.get("content") if isinstance(msg, dict) else None
            for j, part in enumerate(content if isinstance(content, list) else []):
                if isinstance(part, dict) and part.get("type") in ctx.part_types and len(part) == 1:
                    raise DataError(
                        f"{where}: message {i} part {j} ({part['type']}) holds no data (no 'path' or value); "
                        f"media listed in a '{part['type']}s' column is the messages format: data.format=messages"
                    )
    return messages, obj.get("kind")


# ---- the JSONL-only API kept for tools and tests -------------------------------------
def json_lines(path: Path):
    """Yield ``("file:line", text)`` for each non-blank line of a JSONL file."""
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield f"{path}:{lineno}", line


def parse_record_line(line: str, where: str) -> dict[str, Any]:
    """Parse one JSONL line into a record object with ``messages``; errors name ``where``."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict) or "messages" not in obj:
        raise DataError(f"{where}: a record must be an object with 'messages'")
    return obj


def read_jsonl(path: str | Path, part_types: dict[str, str], on_error: str = "raise", report: SkipReport | None = None) -> list[Record]:
    """Read and validate a whole omnimodal JSONL file into a list; ``on_error='skip'`` skips
    bad lines into ``report``. For small files: training reads lazily through ``open_split``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if on_error not in ("raise", "skip"):
        raise DataError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
    records = []
    for where, line in json_lines(path):
        try:
            obj = parse_record_line(line, where)
            kind = check_kind(obj.get("kind"), where)
            messages = validate_messages(obj["messages"], where, part_types)
            records.append(Record(messages, where, path.parent, kind))
        except DataError as exc:
            if on_error == "raise" or report is None:
                raise
            report.add(where, exc)
    if not records:
        raise DataError(f"{path}: no usable records")
    return records
