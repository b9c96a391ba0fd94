"""LLaVA's layout: ``{"id", "image": "a.jpg" | [...], "conversations": [{"from", "value"}]}``.

The text is used verbatim: each placeholder (``<image>``, or another active modality's own,
``<audio>``) stands where it is typed and takes the next media value of its type, listed
under the key named by the part type. Records without media are text-only conversations.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from omnimodal.data.formats.media import media_list, media_part
from omnimodal.data.formats.source import ReadContext
from omnimodal.errors import DataError

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@functools.lru_cache(maxsize=16)
def _splitter(placeholders: tuple[tuple[str, str], ...]) -> re.Pattern:
    strings = sorted((p for _, p in placeholders), key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(p) for p in strings) + ")")


def split_placeholders(text: str, placeholders: dict[str, str]) -> list[tuple[str, str]]:
    """``text`` -> ``[("text", piece) | (part_type, placeholder)]`` in order, empty pieces dropped."""
    if not placeholders:
        return [("text", text)] if text else []
    by_string = {p: t for t, p in placeholders.items()}
    out = []
    for piece in _splitter(tuple(sorted(placeholders.items()))).split(text):
        if piece in by_string:
            out.append((by_string[piece], piece))
        elif piece:
            out.append(("text", piece))
    return out


def llava_layout(obj: Any, where: str, ctx: ReadContext) -> tuple[list[dict[str, Any]], Any]:
    """One LLaVA record -> raw messages (parts joined with no separator, so the text is verbatim)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("conversations"), list):
        raise DataError(f"{where}: a LLaVA record must be an object with a 'conversations' list")
    ctx.check_inactive([k for k in ctx.inactive if obj.get(k)], where)
    media = {t: media_list(obj.get(t), t, where) for t in ctx.part_types}
    used = dict.fromkeys(media, 0)
    messages = []
    for i, turn in enumerate(obj["conversations"]):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: conversation turn {i} is not an object")
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise DataError(f"{where}: turn {i} has 'from' {turn.get('from')!r}; valid: {', '.join(ROLES)}")
        value = turn.get("value")
        if not isinstance(value, str):
            raise DataError(f"{where}: turn {i} needs a string 'value'")
        parts = []
        for t, piece in split_placeholders(value, ctx.placeholders):
            if t == "text":
                parts.append({"type": "text", "text": piece})
                continue
            k = used[t]
            if k >= len(media[t]):
                raise DataError(f"{where}: {_count(media, ctx, t)}: turn {i} has one {piece} too many")
            parts.append(media_part(t, media[t][k], where))
            used[t] += 1
        messages.append({"role": role, "content": parts or [{"type": "text", "text": ""}], "separator": ""})
    for t, items in media.items():
        if used[t] != len(items):
            raise DataError(f"{where}: {_count(media, ctx, t)}: each {t} needs its {ctx.placeholders[t]} in the text")
    return messages, obj.get("kind")


def _count(media: dict[str, list[Any]], ctx: ReadContext, t: str) -> str:
    return f"{len(media[t])} {t} value(s) under {t!r} but the text's {ctx.placeholders[t]} placeholders do not match"
