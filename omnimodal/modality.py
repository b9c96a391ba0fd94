"""The modality contract: load -> preprocess -> collate on the data side, encoder on the model side.

A plugin subclasses :class:`Modality` once (one level of base class is plenty) and names the
subclass in its :class:`~omnimodal.specs.ModalitySpec`. The data pipeline calls ``prepare``
in data workers; the model calls ``build_encoder`` once. Encoders return ``(features, mask)``
with features ``[N, L, d_enc]`` and a boolean mask ``[N, L]`` of real (non-padded) positions.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnimodal.errors import DataError
from omnimodal.specs import ModalitySpec


@dataclass
class MediaItem:
    """One preprocessed media item, ready for ``collate``.

    ``length`` is the encoder's sequence length for this item and ``num_tokens`` the number of
    pseudo-tokens it becomes (both known before any forward pass).
    """

    modality: str
    features: dict[str, Any]
    length: int
    num_tokens: int
    source: str


class Modality:
    """Base class of a modality implementation; ``cfg`` is its ``modalities.<name>`` config.

    Subclasses implement ``load``, ``preprocess``, ``encoder_length``, ``collate`` and
    ``build_encoder``, and override ``item_from_part`` / ``item_from_api_part`` when their
    parts hold values rather than paths.
    """

    def __init__(self, spec: ModalitySpec, cfg: dict[str, Any]):
        self.spec = spec
        self.name = spec.name
        self.placeholder = spec.placeholder
        self.part_type = spec.part_type
        self.cfg = copy.deepcopy(dict(cfg))
        self.counters: dict[str, int] = {}

    # ---- data side -------------------------------------------------------------------
    def item_from_part(self, part: dict[str, Any], base_dir: Path | None) -> Any:
        """Turn a data-file content part into a raw item (default: ``path`` relative to the file)."""
        if "path" not in part:
            raise DataError(f"a {self.part_type!r} part needs a 'path' (got keys {sorted(part)})")
        path = Path(part["path"])
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return path

    def item_from_api_part(self, part: dict[str, Any]) -> Any:
        """Turn an OpenAI-style API content part into a raw item."""
        raise DataError(f"modality {self.name!r} accepts no API part of type {part.get('type')!r}")

    def load(self, raw: Any, source: str) -> Any:
        """Load and validate a raw item; raise :class:`~omnimodal.errors.MediaError` naming ``source``."""
        raise NotImplementedError

    def preprocess(self, loaded: Any, source: str) -> dict[str, Any]:
        """Turn a loaded item into encoder-ready features (runs in data workers)."""
        raise NotImplementedError

    def encoder_length(self, features: dict[str, Any]) -> int:
        """The encoder's output length for this item, from its features alone."""
        raise NotImplementedError

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Batch the features of several items (padding where lengths differ)."""
        raise NotImplementedError

    def prepare(self, raw: Any, source: str) -> MediaItem:
        """load -> preprocess -> count tokens, for one item."""
        features = self.preprocess(self.load(raw, source), source)
        length = self.encoder_length(features)
        return MediaItem(self.name, features, length, self.num_tokens(length), source)

    def num_tokens(self, length: int) -> int:
        """Pseudo-tokens for an item of encoder length ``length``: asks the projector kind."""
        from omnimodal.projectors import projector_num_tokens

        return projector_num_tokens(self.cfg.get("projector") or {"kind": "mlp"}, length)

    def count(self, key: str, n: int = 1) -> None:
        """Count an event worth reporting at the end of a run (e.g. clips cut to max duration)."""
        self.counters[key] = self.counters.get(key, 0) + n

    # ---- model side ------------------------------------------------------------------
    def build_encoder(self, load_weights: bool = True):
        """Build the encoder (``nn.Module`` with ``out_dim``); ``load_weights=False`` builds
        the architecture only (used when a saved model's weights will be loaded on top)."""
        raise NotImplementedError

    def share_from(self, owner: Modality) -> None:
        """Called when this modality's config sets ``shared_with: <owner>``: adopt what must match
        the owner's encoder (input size, normalisation...). The default refuses sharing."""
        from omnimodal.errors import ConfigError

        raise ConfigError(f"modality {self.name!r} cannot share another modality's encoder (shared_with={owner.name!r})")

    def wrap_shared_encoder(self, encoder):
        """This modality's encoder around the owner's encoder module (default: the owner's as is)."""
        return encoder

    def save_assets(self, directory: Path) -> None:
        """Write files the modality needs to rebuild itself (e.g. an HF processor)."""

    def load_assets(self, directory: Path) -> None:
        """Read what :meth:`save_assets` wrote."""
