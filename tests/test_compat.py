"""A broken torch/torchaudio pair gets one clear error; the install check fails on broken plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from omnimodal import compat
from omnimodal.plugins import register_plugin
from omnimodal.specs import ModalitySpec

from .conftest import PYTHON, ROOT, cli_env

OMNIMODAL = str(Path(sys.executable).with_name("omnimodal"))
CUDA_ERROR = "PyTorch and TorchAudio were compiled with different CUDA versions (13.2 vs 13.0)"


def test_pyproject_bounds_match_the_startup_check():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert compat.TORCH_SPEC in project["dependencies"]
    assert compat.TORCHAUDIO_SPEC in project["optional-dependencies"]["audio"]
    assert not any("+cpu" in d for d in project["dependencies"])


def _broken_torchaudio(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``import torchaudio`` fails the way a mismatched pair does."""
    pkg = tmp_path / "shadow" / "torchaudio"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"raise OSError({CUDA_ERROR!r})\n")
    return cli_env(PYTHONPATH=f"{tmp_path / 'shadow'}:{ROOT}")


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def test_broken_pair_is_a_clear_error_when_a_model_is_built(tmp_path):
    env = _broken_torchaudio(tmp_path)
    r = _run([PYTHON, "-c", "from omnimodal.model import OmniModel"], env)
    assert r.returncode != 0
    assert "InstallError" in r.stderr and CUDA_ERROR in r.stderr
    assert f"torch {compat.installed_version('torch')} and torchaudio" in r.stderr
    assert compat.FIX_COMMAND in r.stderr
    assert "Could not import module" not in r.stderr


def test_cli_commands_that_build_a_model_say_how_to_fix_it(tmp_path):
    env = _broken_torchaudio(tmp_path)
    for args in (["eval", str(tmp_path / "run")], ["train", "trainer.max_steps=1"]):
        r = _run([OMNIMODAL, *args], env)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("error: torch "), r.stderr
        assert CUDA_ERROR in r.stderr and compat.FIX_COMMAND in r.stderr
        assert "Traceback" not in r.stderr


def test_light_commands_still_work_with_a_broken_pair(tmp_path):
    env = _broken_torchaudio(tmp_path)
    assert _run([OMNIMODAL, "--help"], env).returncode == 0
    r = _run([OMNIMODAL, "plugins"], env)
    assert r.returncode == 0 and "modality vision" in r.stdout


def test_doctor_imports_every_builtin_implementation():
    r = _run([PYTHON, "-m", "omnimodal.doctor"], cli_env())
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("torch", "torchaudio", "transformers", "lightning", "peft", "torch-geometric"):
        assert f"  {name} " in r.stdout
    for what in ("modality vision", "modality audio", "modality molecule", "module of omnimodal_audio    omnimodal_audio.encoders"):
        assert f"ok   {what}" in r.stdout
    assert "FAIL" not in r.stdout


def _modality_plugin(spec: ModalitySpec):
    """A plugin module whose one hook registers ``spec``."""
    plugin = type(sys)(f"{spec.name}_plugin")
    exec(
        textwrap.dedent(
            """
            from omnimodal.hookspecs import hookimpl

            @hookimpl
            def omnimodal_register_modalities(register):
                register(SPEC)
            """
        ),
        plugin.__dict__,
    )
    plugin.SPEC = spec
    return plugin


def test_doctor_reports_an_implementation_that_does_not_import(tmp_path):
    from omnimodal.doctor import import_implementations

    register_plugin(_modality_plugin(ModalitySpec(name="ghost", part_type="ghost", placeholder="<ghost>", impl="no_such_module:Ghost")),
                    "ghost-plugin")
    failures = {what: err for what, _, err in import_implementations() if err}
    assert "ModuleNotFoundError" in failures["modality ghost"]
    assert "modality vision" not in failures


def test_a_missing_extra_is_named_with_its_install_line(monkeypatch, capsys, tmp_path):
    """Commands that need an extra say which one before they import it (not a bare
    ModuleNotFoundError from deep inside)."""
    import importlib.util

    import pytest

    from omnimodal.cli import main

    with pytest.raises(compat.InstallError, match=r"omnimodal serve needs the 'serve' extra \(surely_not_here not installed\): "
                                                  r"pip install 'omnimodal\[serve\]'"):
        compat.require_extra("serve", ("json", "surely_not_here"), "omnimodal serve")
    compat.require_extra("serve", ("json",), "omnimodal serve")  # present: no error

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "omnimodal serve needs the 'serve' extra (fastapi not installed): pip install 'omnimodal[serve]'" in capsys.readouterr().err


def test_doctor_lists_a_modality_whose_extra_is_missing_and_fails_on_it_only_when_strict(monkeypatch, capsys):
    from omnimodal import doctor
    from omnimodal.plugins import unregister_plugin

    spec = ModalitySpec(name="ecg", part_type="ecg", placeholder="<ecg>", impl="no_such_module:Ecg",
                        requires=("surely_not_installed_pkg",), install_hint="pip install 'omnimodal-ecg[full]'")
    register_plugin(_modality_plugin(spec), "ecg-plugin")
    try:
        monkeypatch.delenv("CI", raising=False)
        assert doctor.main([]) == 0
        out = capsys.readouterr().out
        assert "skip modality ecg" in out and "pip install 'omnimodal-ecg[full]'" in out and "FAIL" not in out
        assert doctor.main(["--strict"]) == 1
        assert "FAIL modality ecg" in capsys.readouterr().out
        monkeypatch.setenv("CI", "true")  # CI installs .[dev]: a missing extra is a broken install there
        assert doctor.main([]) == 1
    finally:
        unregister_plugin("ecg-plugin")
