"""Reading JSONL conversations: one record per line, validated with file:line errors.

A record is ``{"messages": [{"role": ..., "content": [parts]}], "kind": optional}``. A part is
``{"type": "text", "text": ...}`` or a modality's part type (``image``, ``audio``...).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnimodal.errors import DataError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass
class Record:
    """One validated conversation; ``source`` is ``file:line`` for error messages."""

    messages: list[dict[str, Any]]
    source: str
    base_dir: Path | None = None
    kind: str | None = None

    def media_parts(self) -> list[dict[str, Any]]:
        """Every non-text part, in conversation order."""
        return [p for m in self.messages for p in m["content"] if p["type"] != "text"]


@dataclass
class SkipReport:
    """What ``on_error=skip`` skipped, and why."""

    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, source: str, exc: Exception) -> None:
        key = type(exc).__name__ + ": " + _reason(exc)
        self.reasons[key] += 1
        self.examples.setdefault(key, source)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        if not self.total:
            return "no records skipped"
        lines = [f"skipped {self.total} record(s):"]
        for key, n in self.reasons.most_common():
            lines.append(f"  {n} x {key} (e.g. {self.examples[key]})")
        return "\n".join(lines)


def _reason(exc: Exception) -> str:
    text = str(exc)
    # Drop the leading "file:line:" so identical reasons group together.
    return text.split(": ", 1)[1] if ": " in text and ".jsonl:" in text.split(": ", 1)[0] else text


def normalise_content(content: Any, where: str) -> list[dict[str, Any]]:
    """Accept a string or a list of parts; return a list of parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise DataError(f"{where}: 'content' must be a non-empty string or list of parts")
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise DataError(f"{where}: content part {j} must be an object with a string 'type'")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise DataError(f"{where}: text part {j} needs a string 'text'")
        parts.append(part)
    return parts


def validate_messages(raw: Any, where: str, part_types: dict[str, str], require_answer: bool = True) -> list[dict[str, Any]]:
    """Check roles, content parts and part types; ``part_types`` maps part type -> modality."""
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    messages = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise DataError(f"{where}: message {i} is not an object")
        role = msg.get("role")
        if role not in ROLES:
            raise DataError(f"{where}: message {i} has role {role!r}; valid roles: {', '.join(ROLES)}")
        parts = normalise_content(msg.get("content"), f"{where}: message {i}")
        for j, part in enumerate(parts):
            t = part["type"]
            if t == "text":
                continue
            if t not in part_types:
                valid = ", ".join(["text", *sorted(part_types)])
                raise DataError(
                    f"{where}: message {i} part {j} has unknown type {t!r} (valid here: {valid}; "
                    "a modality's part type is valid only when that modality is active)"
                )
            if role == "assistant":
                raise DataError(f"{where}: message {i}: media parts in assistant turns are not supported")
        messages.append({"role": role, "content": parts})
    if require_answer and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant turn, so nothing to learn from")
    return messages


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
    """Read and validate a JSONL file; ``on_error='skip'`` skips bad lines into ``report``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if on_error not in ("raise", "skip"):
        raise DataError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
    records = []
    for where, line in json_lines(path):
        try:
            obj = parse_record_line(line, where)
            kind = obj.get("kind")
            if kind is not None and not isinstance(kind, str):
                raise DataError(f"{where}: 'kind' must be a string")
            messages = validate_messages(obj["messages"], where, part_types)
            records.append(Record(messages, where, path.parent, kind))
        except DataError as exc:
            if on_error == "raise" or report is None:
                raise
            report.add(where, exc)
    if not records:
        raise DataError(f"{path}: no usable records")
    return records
