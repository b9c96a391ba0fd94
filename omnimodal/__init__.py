"""omnimodal: any-modality LLMs in the LLaVA family.

Light on import: heavy pieces (torch, Lightning) load only when you touch them, e.g.
``from omnimodal.model import OmniModel`` or ``omnimodal.load(path)``.
"""

from __future__ import annotations

from typing import Any

from omnimodal.hookspecs import API_VERSION, hookimpl
from omnimodal.specs import DemoSpec, ModalitySpec, ProjectorSpec

__version__ = "0.1.0"
hookimpl_marker = hookimpl

__all__ = ["API_VERSION", "DemoSpec", "ModalitySpec", "ProjectorSpec", "hookimpl", "load", "__version__"]


def __getattr__(name: str) -> Any:
    """Lazy attributes: ``omnimodal.load`` imports torch only when first used."""
    if name == "load":
        from omnimodal.inference import load

        return load
    raise AttributeError(f"module 'omnimodal' has no attribute {name!r}")
