"""The modality contract: load -> preprocess -> collate on the data side, encoder on the model side.

A plugin subclasses :class:`Modality` once (one level of base class is plenty) and names the
subclass in its :class:`~omnimodal.specs.ModalitySpec`. The data pipeline calls ``prepare``
in data workers; the model calls ``build_encoder`` once. Encoders return ``(features, mask)``
with features ``[N, L, d_enc]`` and a boolean mask ``[N, L]`` of real (non-padded) positions.

The contract (checked for every registered modality by :func:`omnimodal.testing.check_modality`):

- ``encoder_length(features)`` is a pure function of ``self.cfg`` and the item's features
  (shape, metadata), and it is *the* function the encoder uses to size its output (call one
  shared function from both, e.g. ``conv_output_length`` in the audio plugin), so the token
  count planned by the data side cannot drift from what the encoder emits. It runs in data
  workers: it never builds an encoder.
- ``build_encoder`` leaves ``self.cfg`` unchanged: what is saved is what the user wrote plus
  the defaults resolved in ``__init__``. Anything else a saved model needs to rebuild itself
  (a pretrained tower's architecture, its processor) goes to ``save_assets``.
- An item encodes the same alone or in a padded batch of items of other sizes.
- Encoder + projector give each item its ``num_tokens`` valid pseudo-tokens *first* in its row
  (padding after them): the training splice takes row ``i``'s first ``num_tokens`` tokens by index.
- A bad item raises :class:`~omnimodal.errors.DataError` (or ``MediaError``) naming ``source``.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnimodal.errors import DataError, MediaError, PluginError
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


def url_part_item(part: dict[str, Any], key: str) -> str | bytes:
    """An OpenAI-style ``{"type": key, key: {"url": ...}}`` part -> a raw item: an http(s) URL as it
    is (the server decides whether remote media are allowed, and fetches them), a base64
    ``data:`` URL decoded to bytes. ``key`` is e.g. ``"image_url"``; errors name it."""
    import base64
    import binascii

    url = part.get(key)
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str):
        raise MediaError(f"{key} part needs {key}.url as a string")
    if url.startswith(("http://", "https://")):
        return url
    header, _, data = url.partition(",")
    if not header.startswith("data:") or ";base64" not in header:
        raise MediaError(f"{key}: only base64 data: URLs are accepted here (got {url[:40]!r}...)")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"{key}: invalid base64 data ({exc})") from exc


class Modality:
    """Base class of a modality implementation; ``cfg`` is its ``modalities.<name>`` config.

    Subclasses implement ``load``, ``preprocess``, ``encoder_length``, ``collate``,
    ``build_encoder`` and ``example_items``, and override ``item_from_part`` /
    ``item_from_api_part`` / ``cli_part`` when their parts hold values rather than paths.
    Resolve config defaults in ``__init__`` (into ``self.cfg``), never later.
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

    def cli_part(self, value: str) -> dict[str, Any]:
        """A command-line value (``omnimodal chat --FLAG VALUE``) -> a data-file content part.

        Default: ``{"type": part_type, "path": value}``; the part then goes through
        :meth:`item_from_part` (relative paths from the current directory).
        """
        return {"type": self.part_type, "path": value}

    def load(self, raw: Any, source: str) -> Any:
        """Load and validate a raw item; raise :class:`~omnimodal.errors.MediaError` naming ``source``."""
        raise NotImplementedError

    def preprocess(self, loaded: Any, source: str) -> dict[str, Any]:
        """Turn a loaded item into encoder-ready features (runs in data workers)."""
        raise NotImplementedError

    def encoder_length(self, features: dict[str, Any]) -> int:
        """The encoder's output length for this item: a pure function of ``self.cfg`` and the
        item's features, shared with the encoder's forward (see the module docstring)."""
        raise NotImplementedError

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Batch the features of several items (padding where lengths differ).

        Return tensors in plain dicts, lists or tuples: from a data worker their small tensors
        travel to the training process in one shared buffer (:mod:`omnimodal.data.transport`);
        other objects travel as they are, each of their tensors by its own descriptor.
        """
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

    def estimate_tokens(self, raw: Any) -> int | None:
        """The pseudo-token count of a raw item (what :meth:`item_from_part` returns) from what
        is cheap to know without loading it (config, a file header, the string), or ``None``.

        Used only to order conversations by length (``data.group_by_length``), never to size
        anything: the real count is :meth:`prepare`'s. Default: ``None`` (unknown; counted as 0).
        """
        return None

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

    # ---- contract examples (omnimodal.testing) ----------------------------------------
    def example_items(self, rng: random.Random, n: int) -> list[Any]:
        """``n`` valid raw items of varied sizes, drawn from ``rng`` (for the contract check).

        Vary whatever changes the token count (length, atoms, resolution) as widely as the
        modality allows; the check encodes them alone and in one padded batch.
        """
        raise NotImplementedError(f"modality {self.name!r} supplies no example_items for the contract check")

    def bad_items(self) -> list[tuple[Any, str]]:
        """``(raw item, words the error must contain)`` pairs that ``prepare`` must refuse.

        The contract check adds generic ones (an unsupported object, a missing file); the
        error must name the item's source either way.
        """
        return []


def build_encoder_checked(modality: Modality, load_weights: bool = True):
    """``modality.build_encoder(load_weights)``, refusing a build that changed ``modality.cfg``.

    A config changed by building would make what is saved depend on call order; the plugin
    must keep such state elsewhere (an attribute, or ``save_assets``).
    """
    before = copy.deepcopy(modality.cfg)
    encoder = modality.build_encoder(load_weights=load_weights)
    if modality.cfg != before:
        changed = sorted(_changed_keys(before, modality.cfg))
        raise PluginError(
            f"modality {modality.name!r} ({modality.spec.impl}): build_encoder changed its config "
            f"(keys {', '.join(changed)}); keep built state out of Modality.cfg"
        )
    return encoder


def _changed_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in set(a) | set(b):
            out += _changed_keys(a.get(key), b.get(key), f"{prefix}{key}.") if key in a and key in b else [f"{prefix}{key}"]
        return out
    return [] if a == b else [prefix.rstrip(".")]
