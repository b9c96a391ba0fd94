"""The messages + media columns layout (TRL's examples, ``llava-instruct-mix-vsft``).

``{"messages": [{"role", "content": "text" | [{"type": "image"}, {"type": "text", "text"}]}],
"images": [...]}``: each media part takes the next value of its type's column, named by the
part type plus ``s`` (``images``, ``audios``). Only typed parts count as media (a placeholder
string in a text part is text), and keys holding null (Arrow fills missing struct fields
with nulls) are ignored.
"""

from __future__ import annotations

from typing import Any

from omnimodal.data.formats.media import media_list, media_part
from omnimodal.data.formats.source import ReadContext
from omnimodal.errors import DataError


def column_of(part_type: str) -> str:
    """The column holding a part type's media values: ``image`` -> ``images``."""
    return part_type + "s"


def messages_layout(obj: Any, where: str, ctx: ReadContext) -> tuple[list[dict[str, Any]], Any]:
    """One messages row -> raw messages; media parts filled from the media columns in order."""
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise DataError(f"{where}: a messages record must be an object with a 'messages' list")
    ctx.check_inactive([column_of(k) for k in ctx.inactive if obj.get(column_of(k))], where)
    media = {t: media_list(obj.get(column_of(t)), t, where) for t in ctx.part_types}
    used = dict.fromkeys(media, 0)
    messages = []
    for i, msg in enumerate(obj["messages"]):
        if not isinstance(msg, dict):
            raise DataError(f"{where}: message {i} is not an object")
        content = msg.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict):
                    raise DataError(f"{where}: message {i} part {j} is not an object")
                part = {k: v for k, v in part.items() if v is not None}
                t = part.get("type")
                if t in media and len(part) == 1:  # a bare {"type": "image"}: the next column value
                    if used[t] >= len(media[t]):
                        raise DataError(
                            f"{where}: message {i} part {j}: more {t} parts than values in "
                            f"{column_of(t)!r} ({len(media[t])})"
                        )
                    part = media_part(t, media[t][used[t]], where)
                    used[t] += 1
                parts.append(part)
            content = parts
        messages.append({**{k: v for k, v in msg.items() if v is not None}, "content": content})
    for t, items in media.items():
        if used[t] != len(items):
            raise DataError(f"{where}: {len(items)} value(s) in {column_of(t)!r} but {used[t]} {t} part(s) in the messages")
    return messages, obj.get("kind")
