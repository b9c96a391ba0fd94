"""A third-party modality for tests: point clouds (``[N, 3]`` arrays) -> grouped PointNet.

It is installed in tests as a temporary distribution with an ``omnimodal`` entry point, the
way ``pip install omnimodal-pointcloud`` would install it, and it names nothing of the core
beyond the public plugin API. ``bug`` in its config makes it break one rule of the contract on
purpose, so the tests can show that :func:`omnimodal.testing.check_modality` catches it.
"""

from pathlib import Path

from omnimodal.hookspecs import hookimpl
from omnimodal.specs import ModalitySpec

OMNIMODAL_API_VERSION = 2


@hookimpl
def omnimodal_register_modalities(register):
    register(
        ModalitySpec(
            name="pointcloud",
            part_type="points",
            placeholder="<points>",
            impl="omnimodal_pointcloud.modality:PointCloud",
            api_part_types=("input_points",),
            cli_flags=("points",),
            cli_help="point cloud: a .npy file of [N, 3] floats",
            description="point clouds -> grouped PointNet",
        )
    )


@hookimpl
def omnimodal_config_dirs():
    return [str(Path(__file__).parent / "conf")]
