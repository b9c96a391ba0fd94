"""`omnimodal new-plugin NAME`: the package it writes installs, is listed, passes its own
contract test and trains on its own demo data, as written, with no edit.

The install is real: ``pip install --no-deps --no-build-isolation -e PKG --prefix TMP`` (pip and
setuptools' PEP 660 editable build, offline; ``--no-deps`` keeps this omnimodal), then every
step runs in a fresh interpreter that adds ``TMP``'s site-packages with ``site.addsitedir``, which
reads the editable install's ``.pth`` as a venv's site-packages would. Nothing else puts the
package on ``sys.path``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from omnimodal.cli import main
from omnimodal.errors import ConfigError
from omnimodal.scaffold import new_plugin, plugin_names, template_files

from ._require import require
from .conftest import PYTHON, cli_env

TINY = [
    "decoder.hidden_size=64", "decoder.intermediate_size=128", "decoder.num_hidden_layers=2",
    "decoder.num_attention_heads=4", "decoder.num_key_value_heads=4", "decoder.tokenizer.vocab_size=400",
    "data.batch_size=16", "data.num_workers=0", "trainer.enable_progress_bar=false",
]


def test_new_plugin_writes_every_template_and_refuses_bad_names_and_non_empty_dirs(tmp_path, capsys):
    assert main(["new-plugin", "ecg", "--dir", str(tmp_path / "pkg")]) == 0
    out = capsys.readouterr().out
    assert "pip install -e" in out and "omnimodal train modalities=[ecg]" in out
    written = sorted(p.relative_to(tmp_path / "pkg").as_posix() for p in (tmp_path / "pkg").rglob("*") if p.is_file())
    assert written == [
        "README.md", "omnimodal_ecg/__init__.py", "omnimodal_ecg/conf/ecg/encoder/default.yaml",
        "omnimodal_ecg/conf/modalities/ecg.yaml", "omnimodal_ecg/demo.py", "omnimodal_ecg/encoder.py",
        "omnimodal_ecg/modality.py", "pyproject.toml", "tests/test_contract.py",
    ]
    assert len(template_files()) == len(written)
    pyproject = (tmp_path / "pkg" / "pyproject.toml").read_text()
    assert '"omnimodal>=0.1"' in pyproject and 'ecg = "omnimodal_ecg"' in pyproject
    assert (tmp_path / "pkg/omnimodal_ecg/conf/modalities/ecg.yaml").read_text().startswith("# @package modalities.ecg")
    assert plugin_names("point_cloud")["cls"] == "PointCloudModality"
    require("ruff", "dev")
    lint = subprocess.run([PYTHON, "-m", "ruff", "check", "--no-cache", "--select", "E,F,W,I,B,UP", "--ignore", "E501", str(tmp_path / "pkg")], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr  # the generated code is lint-clean
    for bad in ("ECG", "1ecg", "my-ecg", "class", ""):
        with pytest.raises(ConfigError, match="lower-case identifier"):
            plugin_names(bad)
    assert main(["new-plugin", "ecg", "--dir", str(tmp_path / "pkg")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    new_plugin("ecg", tmp_path / "pkg", force=True)


def _in_installed_env(site: str, code: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that sees ``site`` as a site-packages directory."""
    prelude = f"import site, sys; site.addsitedir({site!r}); "
    return subprocess.run([PYTHON, "-c", prelude + code], capture_output=True, text=True, timeout=timeout, env=cli_env(**env))


@pytest.mark.slow
def test_generated_plugin_installs_is_listed_passes_its_contract_and_trains(tmp_path):
    require("wheel", "dev")  # setuptools' editable build needs it without build isolation
    pkg = new_plugin("sensor", tmp_path / "omnimodal-sensor")
    prefix = tmp_path / "prefix"
    pip = subprocess.run(
        [PYTHON, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(pkg), "--prefix", str(prefix)],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    site = str(prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages")

    # 1. listed, from the installed distribution's entry point
    listed = _in_installed_env(site, "from omnimodal.cli import main; sys.exit(main(['plugins']))")
    assert listed.returncode == 0, listed.stderr
    assert "sensor  (omnimodal-sensor 0.1.0)  [ok]  entry point: omnimodal_sensor" in listed.stdout
    assert "modality sensor: part type 'sensor', placeholder <sensor>, API parts ['sensor'], chat flags --sensor" in listed.stdout

    # 2. its own test file: the omnimodal.testing contract (and its demo builder)
    tests = _in_installed_env(site, f"import pytest; sys.exit(pytest.main([{str(pkg / 'tests')!r}, '-q', '-p', 'no:cacheprovider']))")
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "2 passed" in tests.stdout

    # 3. trains on its own demo data (the demo hook builds it), saves and evaluates the model
    run = tmp_path / "run"
    args = ["train", "modalities=[sensor]", *TINY, "trainer.max_steps=10", "trainer.max_epochs=1", f"hydra.run.dir={run}"]
    trained = _in_installed_env(site, f"from omnimodal.cli import main; sys.exit(main({args!r}))", OMNIMODAL_DEMO_DIR=str(tmp_path / "demo"))
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert (tmp_path / "demo" / "sensor-v1-seed0" / "train.jsonl").is_file()
    saved = json.loads((run / "model" / "omnimodal.json").read_text())
    assert saved["modalities"]["sensor"]["distribution"] == "omnimodal-sensor"
    table = json.loads((run / "result.json").read_text())["eval"]["sensor"]
    assert set(table) == {"sign", "size", "overall"} and table["overall"]["n"] == 80


def test_every_hook_is_documented_in_the_plugin_guide():
    """docs/writing-a-plugin.md has a section per hook of omnimodal/hookspecs.py, with its docstring's summary."""
    import inspect
    from pathlib import Path

    from omnimodal import hookspecs

    guide = (Path(__file__).resolve().parents[1] / "docs" / "writing-a-plugin.md").read_text()
    hooks = [f for _, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "omnimodal_spec")]
    assert len(hooks) >= 5
    for hook in hooks:
        params = ", ".join(inspect.signature(hook).parameters)
        assert f"### `{hook.__name__}({params})`" in guide, f"hook {hook.__name__} is not documented in docs/writing-a-plugin.md"
        summary = inspect.getdoc(hook).split("\n\n")[0].replace("\n", " ")
        assert summary in guide.replace("\n", " "), f"the guide's {hook.__name__} does not match its hookspec docstring: {summary!r}"
    assert f"OMNIMODAL_API_VERSION = {hookspecs.API_VERSION}" in guide
