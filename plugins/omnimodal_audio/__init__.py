"""omnimodal's audio plugin: sound -> log-mel -> conv+transformer (or Whisper) encoder -> projector.

This module is the plugin's entry point and stays light: it registers specs only (no torch).
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
            name="audio",
            part_type="audio",
            placeholder="<audio>",
            impl="omnimodal_audio.modality:AudioModality",
            api_part_types=("input_audio",),
            requires=("torchaudio", "soundfile"),
            install_hint="pip install 'omnimodal[audio]'",
            description="sound (WAV/FLAC/OGG path or bytes, array + rate) -> log-mel -> conv+transformer / Whisper",
            cli_flags=("audio",),
            cli_help="audio file (WAV, FLAC, OGG)",
        )
    )


@hookimpl
def omnimodal_config_dirs():
    return [str(Path(__file__).parent / "conf")]


@hookimpl
def omnimodal_demo_data():
    return [DemoSpec("audio", "omnimodal_audio.demo:build", version="2", description="tone sequences QA")]
