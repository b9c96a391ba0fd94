"""omnimodal: any-modality LLMs in the LLaVA family.

Light on import: heavy pieces (torch, Lightning) load only when you touch them, e.g.
``from omnimodal.model import OmniModel`` or ``omnimodal.load(path)``.
"""

from __future__ import annotations

from typing import Any

from omnimodal.hookspecs import API_VERSION, hookimpl
from omnimodal.specs import DemoSpec, ExportSpec, ModalitySpec, ProjectorSpec

__version__ = "0.1.0"
hookimpl_marker = hookimpl

__all__ = [
    "API_VERSION", "DemoSpec", "ExportSpec", "GenerationOptions", "ModalitySpec", "Pipeline", "ProjectorSpec", "Run", "compose", "evaluate", "fit",
    "hookimpl", "load", "__version__",
]


_LAZY = {
    "load": "omnimodal.inference",
    "Pipeline": "omnimodal.inference",
    "GenerationOptions": "omnimodal.inference",
    "compose": "omnimodal.api",
    "fit": "omnimodal.api",
    "evaluate": "omnimodal.api",
    "Run": "omnimodal.api",
}


def __getattr__(name: str) -> Any:
    """Lazy attributes: ``omnimodal.load`` (and ``Pipeline``) import torch only when first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omnimodal' has no attribute {name!r}")
