"""The built wheel: what a non-editable install (``pip install omnimodal``) gets.

An editable install reads the YAML groups and plugin templates from the checkout, so a folder
left out of the wheel only shows up for users of the wheel; this test builds it and compares.
"""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from ._require import require
from .conftest import PYTHON

ROOT = Path(__file__).resolve().parents[1]


def _data_files() -> set[str]:
    """Every YAML group and template file of the source tree, as its path inside the wheel."""
    mapped = {ROOT / "conf": "omnimodal/conf", ROOT / "omnimodal" / "scaffold" / "template": "omnimodal/scaffold/template"}
    mapped.update({p: p.name for p in (ROOT / "plugins").iterdir() if p.is_dir() and (p / "__init__.py").is_file()})
    files = set()
    for src, dst in mapped.items():
        for f in src.rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and (f.suffix in (".yaml", ".tmpl") or src.name == "template"):
                files.add(f"{dst}/{f.relative_to(src).as_posix()}")
    return files


@pytest.mark.slow
def test_the_wheel_ships_every_config_and_template_and_setuptools_warns_of_nothing(tmp_path):
    require("wheel", "dev")  # setuptools' bdist_wheel without build isolation
    # From a copy without build outputs: a stale build/lib would put files in the wheel that
    # the configuration no longer ships.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "outputs",
                                                             "multirun", ".omnimodal_cache", "lightning_logs", ".*_cache"))
    built = subprocess.run(
        [PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "would be ignored" not in built.stdout + built.stderr  # a data folder not listed as a package
    (wheel,) = tmp_path.glob("omnimodal-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _data_files()
    assert len(expected) >= 30 and "omnimodal/conf/config.yaml" in expected
    assert expected <= names, sorted(expected - names)
