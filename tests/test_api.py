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


def _tiny_run_overrides(vision_demo) -> list[str]:
    from .test_training import TINY

    data = [f"data.{split}={vision_demo[split]}" for split in ("train", "val", "test")]
    return ["modalities=[vision]", *TINY, *data, "trainer.max_steps=3", "trainer.max_epochs=1"]


@pytest.mark.slow
def test_fit_twice_in_one_process_chains_stages_and_restores_global_state(vision_demo, tmp_path):
    import logging
    import os
    import warnings

    import torch

    overrides = _tiny_run_overrides(vision_demo)
    before_env, before_filters = dict(os.environ), list(warnings.filters)
    before_levels = {name: logging.getLogger(name).level for name in ("", "lightning.pytorch", "omnimodal")}
    before_rng = torch.get_rng_state()

    run = omnimodal.fit(omnimodal.compose(overrides), output_dir=tmp_path / "align")
    assert isinstance(run, omnimodal.Run) and run.dir == (tmp_path / "align").resolve()
    assert (run.dir / "model" / "omnimodal.json").is_file() and (run.dir / "eval.json").is_file()
    n_test = len(vision_demo["test"].read_text().splitlines())
    assert run.eval["vision"]["overall"]["n"] == n_test and "train/loss" in run.metrics
    assert run.summary["global_step"] == 3

    assert dict(os.environ) == before_env, "fit must not leave PL_GLOBAL_SEED & co. behind"
    assert list(warnings.filters) == before_filters
    assert {name: logging.getLogger(name).level for name in before_levels} == before_levels
    assert torch.equal(torch.get_rng_state(), before_rng)

    sft = omnimodal.fit(omnimodal.compose([*overrides, "stage=sft"]), model=run.model, output_dir=tmp_path / "sft")
    assert sft.summary["global_step"] == 3 and (sft.dir / "model" / "model.safetensors").is_file()
    loaded = omnimodal.load(sft.dir / "model").model
    for key, value in sft.model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


@pytest.mark.slow
def test_own_lightning_trainer_with_the_kit_gives_a_run_omnimodal_reads(vision_demo, tmp_path):
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from omnimodal.model import OmniModel
    from omnimodal.training import OmniDataModule, OmniLightningModule, kit

    from .conftest import texts_of, tiny_decoder_cfg, tiny_vision_cfg

    model = OmniModel.from_config({"decoder": tiny_decoder_cfg(), "modalities": {"vision": tiny_vision_cfg()}},
                                  texts=texts_of([vision_demo["train"]]))
    files = {split: [vision_demo[split]] for split in ("train", "val", "test")}
    dm = OmniDataModule({"batch_size": 8, "num_workers": 0, "max_length": 128, "seed": 0}, files,
                        model.tokenizer, model.modalities, model.placeholder_ids)
    stage = {"lr": 1e-3}
    run = tmp_path / "run"
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=CSVLogger(run, name="logs"),
                        callbacks=[*kit.callbacks(files, stage), *kit.checkpoint_callbacks(run / "checkpoints", "val/loss")],
                        plugins=[kit.checkpoint_io()], default_root_dir=run, enable_progress_bar=False,
                        limit_val_batches=1, log_every_n_steps=1)
    trainer.fit(OmniLightningModule(model, stage), datamodule=dm)
    assert list((run / "logs").glob("**/metrics.csv")), "the user's own logger wrote its metrics"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    model_dir = kit.finish(model, dm, run)

    loaded = omnimodal.load(run)
    assert loaded.model.extra["blind_baseline"] and loaded.model.extra["data"]["test"] == [str(vision_demo["test"].resolve())]
    out = subprocess.run([PYTHON, "-m", "omnimodal.cli", "eval", str(run)], capture_output=True, text=True,
                         timeout=300, env=cli_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "overall" in out.stdout and (model_dir / "omnimodal.json").is_file()
