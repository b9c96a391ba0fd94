"""Hook specifications: the plugin author's reference.

A plugin is a module (or object) registered under the ``omnimodal`` entry-point group::

    # pyproject.toml of your plugin
    [project.entry-points.omnimodal]
    pointcloud = "omnimodal_pointcloud"

and implements any of the hooks below with ``@omnimodal.hookimpl``. Hooks return or register
*light specs* (names, part types, ``"module:Class"`` paths): listing plugins never imports
torch. A plugin may declare ``OMNIMODAL_API_VERSION = 1`` at module level; a plugin built for
another major API version is refused with a clear message.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from omnimodal.specs import DemoSpec, ModalitySpec, ProjectorSpec

PROJECT = "omnimodal"
API_VERSION = 1

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def omnimodal_register_modalities(register: Callable[[ModalitySpec], None]) -> None:
    """Register the modalities this plugin provides: call ``register(ModalitySpec(...))``.

    The host checks names: two plugins registering one modality name is an error naming both.
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
