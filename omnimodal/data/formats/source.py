"""Lazy record sources: an index of rows per file, each row read and validated on access.

Every reader builds a small index (byte offsets, line numbers or an Arrow table on disk) and
turns row ``i`` into a :class:`~omnimodal.data.records.Record` only when asked, so no pass
holds all records. A *layout* function turns one parsed row into messages; the validation
is the same for every format.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omnimodal.data.records import Record, SkipReport, check_kind, validate_messages
from omnimodal.errors import DataError, OmnimodalError

log = logging.getLogger(__name__)


@dataclass
class ReadContext:
    """What readers need to know about the run: part types, their placeholders, the media folder."""

    part_types: dict[str, str]  # part type -> modality name
    placeholders: dict[str, str] = field(default_factory=dict)  # part type -> placeholder string
    media_root: Path | None = None  # data.image_folder: relative media paths resolve against it
    inactive: dict[str, str] = field(default_factory=dict)  # installed but unselected: part type -> modality

    @classmethod
    def for_part_types(cls, part_types: dict[str, str], media_root: str | Path | None = None, placeholders: dict[str, str] | None = None) -> ReadContext:
        """A context for these active part types; placeholders (unless given) and the part types
        of installed but inactive modalities come from the plugin registry (specs only, no torch)."""
        from omnimodal.plugins import get_registry

        registry = get_registry()
        if placeholders is None:
            placeholders = {t: registry.modality(name).placeholder for t, name in part_types.items()}
        inactive = {spec.part_type: spec.name for spec in registry.modalities.values() if spec.part_type not in part_types}
        return cls(dict(part_types), dict(placeholders), Path(media_root).expanduser() if media_root else None, inactive)

    def check_inactive(self, present: list[str], where: str) -> None:
        """Media keys of a modality that is installed but not selected: an error, not dropped."""
        for key in present:
            name = self.inactive.get(key) or self.inactive.get(key[:-1])
            if name:
                raise DataError(f"{where}: the record has {key!r} media but modality {name!r} is not active (add it to modalities=[...])")


class Rows(Protocol):
    """An indexed file: ``len`` rows, row ``i`` parsed on demand, with its ``file:line`` name."""

    path: Path
    container: str

    def __len__(self) -> int: ...

    def where(self, i: int) -> str: ...

    def row(self, i: int) -> Any: ...


# A layout turns one parsed row into (raw messages, kind); it raises DataError naming `where`.
Layout = Callable[[Any, str, ReadContext], tuple[list[dict[str, Any]], Any]]


class RecordSource(Sequence):
    """The records of one file, read lazily: ``source[i]`` parses and validates row ``i``."""

    def __init__(self, rows: Rows, layout: Layout, layout_name: str, ctx: ReadContext):
        self.rows = rows
        self.layout = layout
        self.layout_name = layout_name
        self.ctx = ctx
        self.path = rows.path
        self.base_dir = ctx.media_root or (rows.path if rows.path.is_dir() else rows.path.parent)

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        """``file:line`` (or ``file[index]``) of record ``i``."""
        return self.rows.where(i)

    def __getitem__(self, i: int) -> Record:
        if not isinstance(i, int):
            raise TypeError("record sources are indexed by int")
        if i < 0:
            i += len(self)
        where = self.rows.where(i)
        obj = self.rows.row(i)
        raw, kind = self.layout(obj, where, self.ctx)
        messages = validate_messages(raw, where, self.ctx.part_types)
        return Record(messages, where, self.base_dir, check_kind(kind, where))

    def describe(self) -> str:
        return f"{self.path}: {self.layout_name} ({self.rows.container}), {len(self)} records"


class RecordSet(Sequence):
    """Several sources (one split's files) as one lazy sequence, optionally through an index view.

    ``set[i]`` raises on a bad record; iterating streams the records, and with
    ``on_error='skip'`` passes over bad ones (not counted: the training loader counts them
    when it meets them, and :meth:`valid` when it filters).
    """

    def __init__(self, sources: list[RecordSource], keep: Any = None, on_error: str = "raise"):
        self.sources = sources
        self.on_error = on_error
        self.starts = [0]
        for s in sources:
            self.starts.append(self.starts[-1] + len(s))
        self.keep = keep  # numpy array of kept global indices, or None for all

    def __len__(self) -> int:
        return len(self.keep) if self.keep is not None else self.starts[-1]

    def _locate(self, i: int) -> tuple[RecordSource, int]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.keep is not None:
            i = int(self.keep[i])
        k = bisect.bisect_right(self.starts, i) - 1
        return self.sources[k], i - self.starts[k]

    def __getitem__(self, i: int) -> Record:
        source, j = self._locate(i)
        return source[j]

    def where(self, i: int) -> str:
        source, j = self._locate(i)
        return source.where(j)

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            try:
                yield self[i]
            except OmnimodalError:
                if self.on_error != "skip":
                    raise

    def valid(self, report: SkipReport) -> RecordSet:
        """A view without the records that fail to parse or validate, each counted in ``report``
        (one streaming pass that keeps only an index array; used for evaluation sets)."""
        import numpy as np

        keep = []
        for i in range(len(self)):
            try:
                self[i]
            except OmnimodalError as exc:
                report.add(self.where(i), exc)
                continue
            keep.append(self.keep[i] if self.keep is not None else i)
        if not keep:
            raise DataError(f"{', '.join(str(s.path) for s in self.sources)}: no usable records")
        return RecordSet(self.sources, np.asarray(keep, dtype=np.int64), self.on_error)
