"""Records: one validated conversation each, whatever file format it came from.

A record is ``{"messages": [{"role": ..., "content": [parts]}], "kind": optional}``. A part is
``{"type": "text", "text": ...}`` or a modality's part type (``image``, ``audio``...). The
readers in :mod:`omnimodal.data.formats` turn each format's rows into these and call
:func:`validate_messages`; this module holds validation and the skip report only.
"""

from __future__ import annotations

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
    """One validated conversation; ``source`` is ``file:line`` (or ``file[index]``) for errors."""

    messages: list[dict[str, Any]]
    source: str
    base_dir: Path | None = None
    kind: str | None = None

    def media_parts(self) -> list[dict[str, Any]]:
        """Every non-text part, in conversation order."""
        return [p for m in self.messages for p in m["content"] if p["type"] != "text"]


@dataclass
class SkipReport:
    """What ``on_error=skip`` skipped, and why (each source counted once)."""

    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)

    def add(self, source: str, exc: Exception | str) -> bool:
        """Count ``source`` as skipped; False if it was already counted (seen again next epoch)."""
        if source in self.sources:
            return False
        self.sources.add(source)
        key = exc if isinstance(exc, str) else reason_key(source, exc)
        self.reasons[key] += 1
        if key not in self.examples:
            self.examples[key] = source
            log.warning("skipping %s: %s (data.on_error=skip)", source, key)
        return True

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


def reason_key(source: str, exc: Exception) -> str:
    """``ErrorType: reason`` with the leading source dropped, so identical reasons group together."""
    text = str(exc)
    if text.startswith(source + ": "):
        text = text[len(source) + 2 :]
        # Per-part prefixes ("message 0 part 1 (image): ") stay: they say where in the record.
    return type(exc).__name__ + ": " + text


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
    """Check roles, content parts and part types; ``part_types`` maps part type -> modality.

    A message may carry ``separator``, the string its parts are joined with when rendered
    (default a newline); formats whose text already holds the placeholders (LLaVA) use ``""``.
    """
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
        out = {"role": role, "content": parts}
        if "separator" in msg:
            if not isinstance(msg["separator"], str):
                raise DataError(f"{where}: message {i}: 'separator' must be a string")
            out["separator"] = msg["separator"]
        messages.append(out)
    if require_answer and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant turn, so nothing to learn from")
    return messages


def check_kind(kind: Any, where: str) -> str | None:
    """A record's optional ``kind`` (question kind for per-kind accuracy) must be a string."""
    if kind is not None and not isinstance(kind, str):
        raise DataError(f"{where}: 'kind' must be a string")
    return kind


# ---- kept for callers of the JSONL-only API (the readers live in data.formats) ----------
def json_lines(path: Path):
    """Yield ``("file:line", text)`` for each non-blank line of a JSONL file."""
    from omnimodal.data.formats.jsonl import json_lines as _json_lines

    return _json_lines(path)


def parse_record_line(line: str, where: str) -> dict[str, Any]:
    """Parse one JSONL line into a record object with ``messages``; errors name ``where``."""
    from omnimodal.data.formats.jsonl import parse_record_line as _parse

    return _parse(line, where)


def read_jsonl(path: str | Path, part_types: dict[str, str], on_error: str = "raise", report: SkipReport | None = None) -> list[Record]:
    """Read and validate a whole omnimodal JSONL file into a list (small files, tests, tools)."""
    from omnimodal.data.formats.jsonl import read_jsonl as _read

    return _read(path, part_types, on_error, report)
