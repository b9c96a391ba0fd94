"""The core's own plugin: built-in projector kinds, the ``omnimodal`` export format.

Registered through the ``omnimodal`` entry point like any other plugin.
"""

from __future__ import annotations

from pathlib import Path

from omnimodal.hookspecs import hookimpl
from omnimodal.specs import ExportSpec, ProjectorSpec

OMNIMODAL_API_VERSION = 3

_P = "omnimodal.projectors:"


@hookimpl
def omnimodal_register_projectors(register):
    register(ProjectorSpec("linear", _P + "LinearProjector", "one linear layer per position"))
    register(ProjectorSpec("mlp", _P + "MLPProjector", "Linear-GELU-Linear per position (LLaVA-1.5)"))
    register(ProjectorSpec("pool", _P + "PoolProjector", "masked mean over windows of `stride`, then MLP"))
    register(ProjectorSpec("resampler", _P + "ResamplerProjector", "K learned queries, cross-attention"))


@hookimpl
def omnimodal_export_formats():
    return [ExportSpec("omnimodal", "omnimodal.export:export_omnimodal", "re-save in omnimodal's own format (LoRA merged)")]


def core_config_dir() -> Path:
    """The directory of the core Hydra configs (``conf/`` of the repository)."""
    import omnimodal.conf

    return Path(omnimodal.conf.__file__).parent
