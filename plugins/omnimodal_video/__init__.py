"""omnimodal's video plugin: clips -> sampled frames -> a vision tower per frame -> pooling -> projector.

This module is the plugin's entry point and stays light: it registers specs only (no torch, no av).
"""

from __future__ import annotations

from pathlib import Path

from omnimodal.hookspecs import hookimpl
from omnimodal.specs import DemoSpec, ModalitySpec

OMNIMODAL_API_VERSION = 3


@hookimpl
def omnimodal_register_modalities(register):
    register(
        ModalitySpec(
            name="video",
            part_type="video",
            placeholder="<video>",
            impl="omnimodal_video.modality:VideoModality",
            api_part_types=("video_url",),
            requires=("av", "PIL"),
            install_hint="pip install 'omnimodal[video]'",
            description="video (MP4/WebM/MKV path or bytes, frames array + fps) -> sampled frames -> ViT / CLIP / SigLIP",
        )
    )


@hookimpl
def omnimodal_config_dirs():
    return [str(Path(__file__).parent / "conf")]


@hookimpl
def omnimodal_demo_data():
    return [DemoSpec("video", "omnimodal_video.demo:build", version="2", description="moving, colour-changing, flashing shapes QA")]
