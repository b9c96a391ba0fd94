"""Compose and run in code: omnimodal.compose gives the CLI's config, with did-you-mean errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import omnimodal
from omnimodal.errors import ConfigError

from .conftest import PYTHON, cli_env

OVERRIDES = ["modalities=[vision,audio]", "stage=align", "trainer.max_epochs=2", "data.batch_size=4",
             "projector@modalities.vision.projector=resampler"]


def test_compose_gives_the_config_the_cli_prints(tmp_path):
    cfg = omnimodal.compose(OVERRIDES)
    out = subprocess.run([PYTHON, "-m", "omnimodal.cli", "train", *OVERRIDES, "--cfg", "job", "--resolve"],
                         capture_output=True, text=True, timeout=120, env=cli_env(), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert OmegaConf.create(out.stdout) == OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert cfg.stage.name == "align" and list(cfg.modalities) == ["vision", "audio"]
    assert cfg.modalities.vision.projector.kind == "resampler"


@pytest.mark.parametrize(
    "override, hint",
    [
        ("data.batch_sise=4", "Did you mean 'batch_size'?"),
        ("trainer.max_epoch=1", "Did you mean 'max_epochs'?"),
        ("stag=full", "Did you mean 'stage'?"),
        ("stage=ful", "Did you mean 'full'?"),
        ("projector@modalities.vision.projector=mpl", "Did you mean 'mlp'?"),
        ("modalities=[visoin]", "Did you mean 'vision'?"),
    ],
)
def test_misspelt_keys_groups_and_options_suggest_the_right_name(override, hint):
    with pytest.raises(ConfigError, match=hint.replace("?", r"\?")):
        omnimodal.compose([override])


def test_compose_inside_an_initialised_hydra_context_puts_it_back(tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    (tmp_path / "app.yaml").write_text("answer: 42\n")
    with initialize_config_dir(config_dir=str(Path(tmp_path).resolve()), version_base="1.3"):
        cfg = omnimodal.compose(["modalities=[vision]"])
        assert list(cfg.modalities) == ["vision"]
        assert hydra_compose(config_name="app").answer == 42  # the user's context still works
