"""Plugin discovery through real entry points, failure isolation, conflicts, API versions."""

import subprocess
import textwrap

import pytest

from omnimodal import hookimpl_marker as hookimpl
from omnimodal.errors import PluginError
from omnimodal.plugins import get_registry, register_plugin, unregister_plugin
from omnimodal.specs import ModalitySpec

from .conftest import PYTHON, cli_env


def make_distribution(root, dist, module, body, conf_files=None, version="0.3.0", ep_name=None):
    """Write a package plus a ``.dist-info`` with an ``omnimodal`` entry point under ``root``."""
    pkg = root / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    for rel, text in (conf_files or {}).items():
        f = pkg / "conf" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[omnimodal]\n{ep_name or module} = {module}\n")
    return root


POINTCLOUD = '''
from pathlib import Path
from omnimodal.hookspecs import hookimpl
from omnimodal.specs import ModalitySpec

OMNIMODAL_API_VERSION = 1

@hookimpl
def omnimodal_register_modalities(register):
    register(ModalitySpec(name="pointcloud", part_type="points", placeholder="<points>",
                          impl="omnimodal_pointcloud.impl:PointCloud"))

@hookimpl
def omnimodal_config_dirs():
    return [str(Path(__file__).parent / "conf")]
'''

POINTCLOUD_CONF = {
    "modalities/pointcloud.yaml": """\
        # @package modalities.pointcloud
        defaults:
          - /projector@projector: resampler
          - _self_
        max_points: 1024
        encoder: {kind: pointnet, width: 64}
        """
}


@pytest.fixture
def third_party(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "omnimodal-pointcloud", "omnimodal_pointcloud", POINTCLOUD, POINTCLOUD_CONF)
    make_distribution(site, "omnimodal-broken", "omnimodal_broken", "raise ImportError('needs libfoo 2.0')\n", version="1.0")
    make_distribution(
        site, "omnimodal-future", "omnimodal_future", "OMNIMODAL_API_VERSION = 2\n", version="9.0"
    )
    return site


def run_cli(args, site, **env):
    return subprocess.run(
        [PYTHON, "-m", "omnimodal.cli", *args], capture_output=True, text=True, timeout=120,
        env=cli_env(PYTHONPATH=str(site), **env),
    )


def test_builtin_plugins_load_through_entry_points():
    registry = get_registry()
    vision = registry.plugin("vision")
    assert vision.distribution == "omnimodal" and vision.value == "omnimodal_vision"
    assert "vision" in vision.modalities
    assert set(registry.plugin("core").projectors) >= {"linear", "mlp", "pool", "resampler"}
    assert registry.modality("vision").placeholder == "<image>"


def test_third_party_plugin_listed_broken_one_reported_others_still_load(third_party):
    out = run_cli(["plugins"], third_party)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "omnimodal_pointcloud  (omnimodal-pointcloud 0.3.0)  [ok]" in text
    assert "modality pointcloud: part type 'points'" in text
    assert "omnimodal_broken  (omnimodal-broken 1.0)  [failed]" in text
    assert "ImportError: needs libfoo 2.0" in text
    assert "[incompatible]" in text and "OMNIMODAL_API_VERSION=2" in text
    assert "modality vision" in text  # healthy plugins unaffected


def test_plugins_can_be_disabled_by_environment(third_party):
    out = run_cli(["plugins"], third_party, OMNIMODAL_DISABLE_PLUGINS="omnimodal_broken,omnimodal_pointcloud")
    assert "[disabled]" in out.stdout
    assert "needs libfoo" not in out.stdout
    assert "modality pointcloud" not in out.stdout


def test_third_party_modality_is_selectable_in_hydra_without_core_edit(third_party):
    out = subprocess.run(
        [PYTHON, "-m", "omnimodal.train", "modalities=[vision,pointcloud]", "--cfg", "job"],
        capture_output=True, text=True, timeout=120, env=cli_env(PYTHONPATH=str(third_party)),
    )
    assert out.returncode == 0, out.stderr
    assert "pointcloud:" in out.stdout and "max_points: 1024" in out.stdout
    assert "num_queries: 8" in out.stdout  # its projector came from the core's projector group
    assert "vision:" in out.stdout


class _Dup:
    @hookimpl
    def omnimodal_register_modalities(self, register):
        register(ModalitySpec(name="vision", part_type="picture", placeholder="<pic>", impl="x:Y"))


def test_two_plugins_claiming_one_modality_name_both_named():
    with pytest.raises(PluginError, match=r"'vision' is registered by two plugins: 'vision' and 'dup-vision'"):
        register_plugin(_Dup(), name="dup-vision")
    unregister_plugin("dup-vision")


class _NeedsMissing:
    @hookimpl
    def omnimodal_register_modalities(self, register):
        register(ModalitySpec(name="ecg", part_type="ecg", placeholder="<ecg>", impl="x:Y",
                              requires=("surely_not_installed_pkg",), install_hint="pip install omnimodal-ecg[full]"))


def test_plugin_with_missing_dependencies_is_unavailable_with_hint():
    register_plugin(_NeedsMissing(), name="ecg")
    try:
        registry = get_registry()
        assert registry.plugin("ecg").status == "unavailable"
        with pytest.raises(PluginError, match=r"unavailable: missing surely_not_installed_pkg; install with: pip install omnimodal-ecg\[full\]"):
            registry.modality("ecg")
    finally:
        unregister_plugin("ecg")


def test_cli_help_and_plugins_do_not_import_heavy_libraries():
    code = (
        "import sys; from omnimodal.cli import main; main(['plugins']);"
        "heavy = [m for m in ('torch', 'lightning', 'torch_geometric', 'transformers', 'rdkit', 'torchaudio') if m in sys.modules];"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_unknown_modality_lists_valid_choices():
    out = subprocess.run([PYTHON, "-m", "omnimodal.cli", "train", "modalities=[visoin]"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "unknown modality 'visoin'" in out.stderr and "Did you mean 'vision'?" in out.stderr
