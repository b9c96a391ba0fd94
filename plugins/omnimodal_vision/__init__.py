"""omnimodal's vision plugin: images -> ViT (from scratch or CLIP/SigLIP) -> projector.

This module is the plugin's entry point and stays light: it registers specs only.
"""

from __future__ import annotations

from pathlib import Path

from omnimodal.hookspecs import hookimpl
from omnimodal.specs import DemoSpec, ExportSpec, ModalitySpec

OMNIMODAL_API_VERSION = 3


@hookimpl
def omnimodal_register_modalities(register):
    register(
        ModalitySpec(
            name="vision",
            part_type="image",
            placeholder="<image>",
            impl="omnimodal_vision.modality:VisionModality",
            api_part_types=("image_url",),
            requires=("PIL",),
            install_hint="pip install pillow",
            description="images (path, bytes, PIL, array) -> ViT / CLIP / SigLIP / SigLIP2",
            cli_flags=("image",),
            cli_help="image file",
        )
    )


@hookimpl
def omnimodal_config_dirs():
    return [str(Path(__file__).parent / "conf")]


@hookimpl
def omnimodal_demo_data():
    return [DemoSpec("vision", "omnimodal_vision.demo:build", version="2", description="coloured shapes QA")]


@hookimpl
def omnimodal_export_formats():
    return [ExportSpec("llava", "omnimodal_vision.llava:export_llava", "a transformers LlavaForConditionalGeneration dir (CLIP/SigLIP tower + mlp projector)")]
