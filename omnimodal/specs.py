"""Light specifications returned by plugin hooks.

These dataclasses import nothing heavy: listing plugins must stay fast, so a spec names where
the implementation lives (``"package.module:attribute"``) instead of holding the class.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


def import_object(path: str):
    """Import ``"package.module:attribute"`` and return the attribute."""
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ModalitySpec:
    """What a plugin declares about one modality.

    Attributes:
        name: the modality's name as used in configs (``modalities=[vision]``).
        part_type: the content-part ``type`` it accepts in data files (``"image"``).
        placeholder: the special token that marks where its pseudo-tokens go (``"<image>"``).
        impl: ``"module:Class"`` of the :class:`omnimodal.modality.Modality` subclass.
        api_part_types: OpenAI-style API part types it accepts (``("image_url",)``); the
            server takes exactly these, each turned into an item by the modality's
            ``item_from_api_part``.
        requires: import names it needs beyond the core (checked without importing).
        install_hint: what to install when ``requires`` are missing.
        description: one line for ``omnimodal plugins``.
        cli_flags: short ``omnimodal chat`` flags for this modality, without dashes
            (``("image",)`` gives ``--image``); each one (and ``name`` and ``part_type``) is
            also accepted as ``--part FLAG=VALUE``. Empty: ``--part`` only.
        cli_help: what a command-line value is (``"image file"``), shown in ``chat --help``.
        feature_cache: whether a frozen encoder's outputs may be cached on disk
            (``data.feature_cache``; API 3). Set it to False when ``preprocess`` is random
            (augmentation): an item's features would then differ between epochs.
    """

    name: str
    part_type: str
    placeholder: str
    impl: str
    api_part_types: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    install_hint: str = ""
    description: str = ""
    cli_flags: tuple[str, ...] = ()
    cli_help: str = ""
    feature_cache: bool = True

    def __post_init__(self) -> None:
        for attr in ("api_part_types", "requires", "cli_flags"):
            value = getattr(self, attr)
            if isinstance(value, str):  # ("image") written for ("image",)
                object.__setattr__(self, attr, (value,))

    def cli_names(self) -> tuple[str, ...]:
        """Every name ``--part NAME=VALUE`` accepts for this modality (flags, part type, name)."""
        return tuple(dict.fromkeys([*self.cli_flags, self.part_type, self.name]))


@dataclass(frozen=True)
class ProjectorSpec:
    """A projector kind: ``name`` (``"mlp"``) and ``impl`` (``"module:Class"``)."""

    name: str
    impl: str
    description: str = ""


@dataclass(frozen=True)
class DemoSpec:
    """Demo data a plugin supplies for its modality.

    ``builder`` is ``"module:function"``; the function is called as
    ``builder(root: pathlib.Path, seed: int) -> dict[str, pathlib.Path]`` and returns the
    ``train``/``val``/``test`` JSONL files it wrote under ``root`` (a directory of its own).
    Bump ``version`` when the data changes so cached copies are rebuilt.
    """

    modality: str
    builder: str
    version: str = "1"
    description: str = ""


@dataclass(frozen=True)
class ExportSpec:
    """An export format a plugin contributes to ``omnimodal export --format NAME``.

    ``exporter`` is ``"module:function"``, called as ``exporter(model, out_dir: pathlib.Path)
    -> pathlib.Path`` with a loaded :class:`~omnimodal.model.OmniModel`; it raises
    :class:`~omnimodal.errors.ConfigError` naming what the format cannot hold.
    """

    name: str
    exporter: str
    description: str = ""


@dataclass
class PluginInfo:
    """One entry point as loaded: where it came from and what it provides (or why it failed)."""

    name: str
    value: str
    distribution: str = "?"
    version: str = "?"
    modalities: list[str] = field(default_factory=list)
    projectors: list[str] = field(default_factory=list)
    config_dirs: list[str] = field(default_factory=list)
    demos: list[str] = field(default_factory=list)
    exports: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | failed | disabled | incompatible | unavailable
    reason: str = ""
