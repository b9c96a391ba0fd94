"""omnimodal-timeseries: the plugin's entry point. Light: specs only, no torch import."""

from pathlib import Path

from omnimodal.hookspecs import hookimpl
from omnimodal.specs import DemoSpec, ModalitySpec

OMNIMODAL_API_VERSION = 3


@hookimpl
def omnimodal_register_modalities(register):
    register(ModalitySpec(
        name="timeseries", part_type="timeseries", placeholder="<timeseries>",
        impl="omnimodal_timeseries.modality:TimeSeries", api_part_types=("timeseries",),
        cli_flags=("timeseries",), cli_help="a .npy/.csv file or a JSON list [[...], ...] of channels",
        requires=("numpy",), install_hint="pip install omnimodal-timeseries",
        description="multichannel series (.npy, .csv, inline values) -> patch transformer",
    ))


@hookimpl
def omnimodal_config_dirs():
    return [str(Path(__file__).parent / "conf")]


@hookimpl
def omnimodal_demo_data():
    return [DemoSpec("timeseries", "omnimodal_timeseries.demo:build", version="3", description="synthetic signals QA")]
