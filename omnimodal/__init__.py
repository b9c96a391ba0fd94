"""omnimodal: any-modality LLMs in the LLaVA family.

Light on import: heavy pieces (torch, Lightning) load only when you touch them, e.g.
``from omnimodal.model import OmniModel``.
"""

from omnimodal.hookspecs import API_VERSION, hookimpl
from omnimodal.specs import DemoSpec, ModalitySpec, ProjectorSpec

__version__ = "0.1.0"
hookimpl_marker = hookimpl

__all__ = ["API_VERSION", "DemoSpec", "ModalitySpec", "ProjectorSpec", "hookimpl", "__version__"]
