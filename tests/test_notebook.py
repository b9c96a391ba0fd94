"""The walkthrough notebook (compose -> fit -> evaluate -> chat) runs top to bottom."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ._require import require

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "walkthrough.ipynb"


@pytest.mark.slow
def test_walkthrough_notebook_executes(tmp_path, monkeypatch):
    nbformat = require("nbformat", "notebook")
    require("nbconvert", "notebook")
    require("ipykernel", "notebook")
    from nbconvert.preprocessors import ExecutePreprocessor

    # The kernel is this interpreter (the kernelspec runs `python` from PATH).
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OMNIMODAL_WALKTHROUGH_TINY", "1")
    monkeypatch.setenv("OMNIMODAL_WALKTHROUGH_DIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    ExecutePreprocessor(timeout=600, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "overall" in outputs and "->" in outputs
    assert (tmp_path / "sft" / "model" / "omnimodal.json").is_file()
