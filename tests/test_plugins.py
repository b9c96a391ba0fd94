"""Plugin discovery through real entry points, failure isolation, conflicts, API versions;
a core that names no modality (chat flags, export formats, API parts come from plugins)."""

import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from omnimodal import hookimpl_marker as hookimpl
from omnimodal import plugins
from omnimodal.errors import ConfigError, PluginError
from omnimodal.plugins import get_registry, register_plugin, unregister_plugin
from omnimodal.specs import ModalitySpec

from .conftest import PYTHON, cli_env

THIRD_PARTY = Path(__file__).parent / "third_party"
# Every modality plugin omnimodal itself ships (its own entry points, except the core's).
BUILTIN_MODALITY_PLUGINS = ",".join(sorted(
    ep.name for ep in __import__("importlib.metadata").metadata.entry_points(group="omnimodal")
    if ep.dist is not None and ep.dist.name == "omnimodal" and ep.name != "core"
))


def make_distribution(root, dist, module, body, conf_files=None, version="0.3.0", ep_name=None):
    """Write a package plus a ``.dist-info`` with an ``omnimodal`` entry point under ``root``."""
    pkg = root / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    for rel, text in (conf_files or {}).items():
        f = pkg / "conf" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    return write_dist_info(root, dist, module, version, ep_name)


def write_dist_info(root, dist, module, version="0.3.0", ep_name=None):
    """The ``.dist-info`` that makes ``module`` under ``root`` an installed plugin distribution."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[omnimodal]\n{ep_name or module} = {module}\n")
    return root


def install_pointcloud(site):
    """Install ``tests/third_party/omnimodal_pointcloud`` under ``site`` as omnimodal-pointcloud 0.3.0."""
    site.mkdir(parents=True, exist_ok=True)
    shutil.copytree(THIRD_PARTY / "omnimodal_pointcloud", site / "omnimodal_pointcloud", ignore=shutil.ignore_patterns("__pycache__"))
    return write_dist_info(site, "omnimodal-pointcloud", "omnimodal_pointcloud", ep_name="pointcloud")


@pytest.fixture
def third_party(tmp_path):
    site = install_pointcloud(tmp_path / "site")
    make_distribution(site, "omnimodal-broken", "omnimodal_broken", "raise ImportError('needs libfoo 2.0')\n", version="1.0")
    make_distribution(site, "omnimodal-lidar", "omnimodal_lidar", "import libfoo_that_is_missing\n", version="0.1", ep_name="lidar")
    make_distribution(
        site, "omnimodal-future", "omnimodal_future", "OMNIMODAL_API_VERSION = 4\n", version="9.0"
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
    assert "pointcloud  (omnimodal-pointcloud 0.3.0)  [ok]" in text
    assert "modality pointcloud: part type 'points'" in text
    assert "omnimodal_broken  (omnimodal-broken 1.0)  [failed]" in text
    assert "ImportError: needs libfoo 2.0" in text
    assert "[incompatible]" in text and "OMNIMODAL_API_VERSION=4" in text and "supports API 1, 2, 3" in text
    assert "modality vision" in text  # healthy plugins unaffected


def test_plugins_can_be_disabled_by_environment(third_party):
    out = run_cli(["plugins"], third_party, OMNIMODAL_DISABLE_PLUGINS="omnimodal_broken,pointcloud")
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


def test_a_run_with_an_unavailable_modality_stops_before_building_data(tmp_path):
    """The default run's modalities come from the config, not an override: each is checked
    before any demo data is built, and the error names the extra and the run that works."""
    from omegaconf import OmegaConf

    from omnimodal.api import compose, fit

    cfg = OmegaConf.to_container(compose(["modalities=[vision]", f"data.demo_root={tmp_path / 'demo'}"]), resolve=True)
    cfg["modalities"]["ecg"] = {"encoder": {}, "projector": {}}  # as if a config group had selected it
    register_plugin(_NeedsMissing(), name="ecg")
    try:
        with pytest.raises(ConfigError, match=r"modality 'ecg' is unavailable: missing surely_not_installed_pkg; install with: "
                                              r"pip install omnimodal-ecg\[full\]; or train without it: modalities=\[vision\]"):
            fit(cfg, output_dir=tmp_path / "run")
    finally:
        unregister_plugin("ecg")
    assert not (tmp_path / "demo").exists()


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


def test_selecting_a_modality_whose_plugin_failed_names_the_plugin_and_import_error(third_party):
    out = run_cli(["train", "modalities=[lidar]"], third_party)
    assert out.returncode == 2
    assert "Plugin 'lidar' (omnimodal-lidar 0.1" in out.stderr
    assert "No module named 'libfoo_that_is_missing'" in out.stderr
    # Hydra directly (no CLI pre-check): the search-path plugin reports it beside Hydra's error
    direct = subprocess.run(
        [PYTHON, "-m", "omnimodal.train", "modalities=[lidar]", "--cfg", "job"],
        capture_output=True, text=True, timeout=120, env=cli_env(PYTHONPATH=str(third_party)),
    )
    assert direct.returncode != 0
    assert "omnimodal plugin 'lidar' (omnimodal-lidar 0.1" in direct.stderr
    assert "libfoo_that_is_missing" in direct.stderr and "modalities/lidar" in direct.stderr


class _MissingConfDir:
    @hookimpl
    def omnimodal_config_dirs(self):
        return ["/nonexistent/omnimodal-conf"]


def test_a_config_dir_that_does_not_exist_fails_the_plugin_by_name():
    register_plugin(_MissingConfDir(), name="nodir")
    try:
        info = get_registry().plugin("nodir")
        assert info.status == "failed" and "/nonexistent/omnimodal-conf" in info.reason
        assert "/nonexistent/omnimodal-conf" not in get_registry().config_dirs
    finally:
        unregister_plugin("nodir")


def test_export_formats_come_from_plugins():
    registry = get_registry()
    assert registry.plugin("vision").exports == ["llava"] and registry.plugin("core").exports == ["omnimodal"]
    with pytest.raises(ConfigError, match=r"Unknown export format 'lava'. Did you mean 'llava'\?"):
        registry.export("lava")


def test_with_only_a_third_party_modality_chat_help_shows_its_flag_and_no_builtin_one(third_party):
    out = run_cli(["chat", "--help"], third_party, OMNIMODAL_DISABLE_PLUGINS=BUILTIN_MODALITY_PLUGINS)
    assert out.returncode == 0, out.stderr
    assert "--points VALUE" in out.stdout and "point cloud: a .npy file of [N, 3] floats" in out.stdout
    for flag in ("--image", "--audio", "--molecule"):
        assert flag not in out.stdout
    with_builtins = run_cli(["chat", "--help"], third_party)
    assert all(f in with_builtins.stdout for f in ("--points", "--image", "--audio", "--molecule"))


@pytest.mark.slow
def test_third_party_part_works_end_to_end_with_only_its_plugin(third_party, tmp_path, monkeypatch, capsys):
    """Build and save a model with the pointcloud modality, then chat with it by flag and by --part."""
    monkeypatch.setenv("OMNIMODAL_DISABLE_PLUGINS", BUILTIN_MODALITY_PLUGINS)
    monkeypatch.syspath_prepend(str(third_party))
    plugins.reset()
    from omnimodal_pointcloud.modality import PointCloud

    import omnimodal
    from omnimodal.cli import main
    from omnimodal.model import OmniModel
    from omnimodal.testing import TINY_DECODER, default_config

    # only third-party modalities (CI also installs examples/omnimodal-timeseries)
    assert "pointcloud" in get_registry().modalities and not set(get_registry().modalities) & set(BUILTIN_MODALITY_PLUGINS.split(","))
    model = OmniModel.from_config({"decoder": TINY_DECODER, "modalities": {"pointcloud": default_config("pointcloud")}}, texts=["what is this?", "a cube", "a sphere"])
    model.save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.standard_normal((7, 3)).astype(np.float32))
    np.save(tmp_path / "b.npy", rng.standard_normal((30, 3)).astype(np.float32))
    seen = []
    load = PointCloud.load
    monkeypatch.setattr(PointCloud, "load", lambda self, raw, source: (seen.append((raw, source)), load(self, raw, source))[1])
    args = ["chat", "--model", str(tmp_path / "model"), "--max-new-tokens", "2", "--device", "cpu"]
    rc = main([*args, "--points", str(tmp_path / "a.npy"), "--part", f"pointcloud={tmp_path / 'b.npy'}", "what is this?"])
    assert rc == 0, capsys.readouterr().err
    assert [Path(raw).name for raw, _ in seen] == ["a.npy", "b.npy"]  # both went through item_from_part, in order
    assert [s.rsplit(": ", 1)[-1] for _, s in seen] == ["message 0 part 0 (points)", "message 0 part 1 (points)"]
    capsys.readouterr()
    assert main([*args, "--points", str(tmp_path / "missing.npy"), "hi"]) == 2
    err = capsys.readouterr().err
    assert "message 0 part 0 (points)" in err and "missing.npy" in err
    with pytest.raises(SystemExit):  # no built-in flag without its plugin
        main([*args, "--image", "x.png", "hi"])
    assert "unrecognized arguments: --image" in capsys.readouterr().err
    # the plugin's own OpenAI API part type, declared in its spec, reaches its modality
    pipe = omnimodal.load(tmp_path / "model", device="cpu")
    prompt = pipe.prepare([{"role": "user", "content": [{"type": "input_points", "input_points": {"data": [[0, 0, 0], [1, 2, 3]]}}, {"type": "text", "text": "hi"}]}], api=True)
    assert [it.num_tokens for it in prompt.sample["items"]] == [8]
    from fastapi.testclient import TestClient

    from omnimodal.serving.app import create_app

    def ask(part):
        body = {"model": "omnimodal", "max_tokens": 2, "temperature": 0, "messages": [{"role": "user", "content": [part, {"type": "text", "text": "hi"}]}]}
        return http.post("/v1/chat/completions", json=body)

    with TestClient(create_app(pipe)) as http:
        assert ask({"type": "input_points", "input_points": {"data": [[0, 0, 0], [1, 2, 3]]}}).status_code == 200
        refused = ask({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})
        assert refused.status_code == 400 and "input_points" in refused.json()["error"]["message"]
    assert main(["export", "--model", str(tmp_path / "model"), "--format", "llava", "--output", str(tmp_path / "x")]) == 2
    assert "Unknown export format 'llava'" in capsys.readouterr().err
