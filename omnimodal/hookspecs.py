"""Hook specifications: the plugin author's reference.

A plugin is a module (or object) registered under the ``omnimodal`` entry-point group::

    # pyproject.toml of your plugin
    [project.entry-points.omnimodal]
    pointcloud = "omnimodal_pointcloud"

and implements any of the hooks below with ``@omnimodal.hookimpl``. Hooks return or register
*light specs* (names, part types, ``"module:Class"`` paths): listing plugins never imports
torch. A plugin may declare ``OMNIMODAL_API_VERSION = 3`` at module level; a plugin built for
an API version this omnimodal does not support is refused with a clear message.

API versions:

- **3** (this version): adds the ``feature_cache`` field of
  :class:`~omnimodal.specs.ModalitySpec` (default True: a frozen encoder's outputs may be
  cached by ``data.feature_cache``; a plugin whose ``preprocess`` is random sets it False).
  Additive: plugins declaring API 1 or 2 still load.
- **2**: adds the ``omnimodal_export_formats`` hook (export formats come from
  plugins; the LLaVA export is the vision plugin's), the ``cli_flags`` / ``cli_help`` fields
  of :class:`~omnimodal.specs.ModalitySpec` (``omnimodal chat`` flags come from specs) and
  the modality contract checked by :mod:`omnimodal.testing`: ``encoder_length`` must be the
  function the encoder itself uses to size its output, ``build_encoder`` must leave
  ``Modality.cfg`` unchanged, and ``example_items`` supplies valid items for the check.
  Everything is additive, so plugins declaring API 1 still load.
- **1**: the first: modalities, projectors, config dirs, demo data.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from omnimodal.specs import DemoSpec, ExportSpec, ModalitySpec, ProjectorSpec

PROJECT = "omnimodal"
API_VERSION = 3
SUPPORTED_API_VERSIONS = (1, 2, 3)  # each version only added to the one before: older plugins still load

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def omnimodal_register_modalities(register: Callable[[ModalitySpec], None]) -> None:
    """Register the modalities this plugin provides: call ``register(ModalitySpec(...))``.

    The host checks names: two plugins registering one modality name is an error naming both.
    Since API 2 a spec may carry ``cli_flags`` (``("image",)`` -> ``omnimodal chat --image``)
    and ``cli_help``; its ``api_part_types`` are the OpenAI API part types the server accepts
    for it (``("image_url",)``). The core names no modality: flags, API part types and export
    formats all come from plugins.

    The implementation (``spec.impl``) is checked by :func:`omnimodal.testing.check_modality`:
    run it in your plugin's tests.
    """


@hookspec
def omnimodal_register_projectors(register: Callable[[ProjectorSpec], None]) -> None:
    """Register projector kinds (``linear``, ``mlp``...): call ``register(ProjectorSpec(...))``."""


@hookspec
def omnimodal_config_dirs() -> list[str]:
    """Return directories to add to Hydra's config search path.

    Put ``modalities/<name>.yaml`` there (starting with ``# @package modalities.<name>``) and
    any groups it uses, and ``modalities=[...,<name>]`` selects it. No Hydra plugin code needed.
    """


@hookspec
def omnimodal_demo_data() -> list[DemoSpec]:
    """Return the demo datasets this plugin supplies (see :class:`omnimodal.specs.DemoSpec`).

    ``omnimodal train`` with no data files builds (once) and trains on the demo set of every
    active modality, so a new modality joins the demo without a core edit.
    """


@hookspec
def omnimodal_export_formats() -> list[ExportSpec]:
    """Return the export formats this plugin contributes (API 2; see :class:`~omnimodal.specs.ExportSpec`).

    ``omnimodal export --format NAME`` lists every registered format; the exporter gets the
    loaded model and the output directory, and refuses a model the format cannot hold with a
    :class:`~omnimodal.errors.ConfigError` naming the reason. The core contributes ``omnimodal``
    (a re-save); the vision plugin contributes ``llava``.
    """
