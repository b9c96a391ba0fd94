"""Media values as the formats hold them (a path, bytes, an Arrow struct) -> content parts."""

from __future__ import annotations

from typing import Any

from omnimodal.errors import DataError


def media_part(part_type: str, value: Any, where: str) -> dict[str, Any]:
    """One media value -> a content part of ``part_type``.

    A string is a path (relative to ``data.image_folder`` or the data file); bytes are the
    encoded file (``{"bytes": ...}``, given to the modality's ``load`` as they are); a Hugging
    Face Image/Audio struct ``{"bytes", "path"}`` is whichever of the two is set; any other
    object gives the part its own fields (``{"smiles": ...}``). Keys holding null are ignored.
    """
    if isinstance(value, str):
        return {"type": part_type, "path": value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"type": part_type, "bytes": bytes(value)}
    if isinstance(value, dict):
        fields = {k: v for k, v in value.items() if v is not None and k != "type"}
        if fields and set(fields) <= {"bytes", "path"}:
            if "bytes" in fields:
                return {"type": part_type, "bytes": bytes(fields["bytes"])}
            return {"type": part_type, "path": fields["path"]}
        if fields:
            return {"type": part_type, **fields}
    raise DataError(f"{where}: a {part_type!r} value must be a path, bytes or an object with its data, got {_show(value)}")


def media_list(value: Any, part_type: str, where: str) -> list[Any]:
    """A record's media of one type: a single value or a list of them (null: none)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):  # numpy arrays from Arrow
        return list(value.tolist())
    return [value]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."
