"""``trainer.compile``: the decoder trains through torch.compile, in place, and is eager again after fit."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import omnimodal
from omnimodal.errors import ConfigError
from omnimodal.training.datamodule import OmniDataModule
from omnimodal.training.module import OmniLightningModule, compile_options

from .conftest import texts_of, tiny_decoder_cfg, tiny_vision_cfg
from .test_training import TINY


def test_compile_options_accept_a_flag_or_torch_compile_arguments():
    assert compile_options(False) is None and compile_options(None) is None
    assert compile_options(True) == {}
    assert compile_options({"mode": "max-autotune", "dynamic": True}) == {"mode": "max-autotune", "dynamic": True}
    with pytest.raises(ConfigError, match="trainer.compile"):
        compile_options("yes")


def _fit(vision_demo, compile, steps: int = 4):
    from omnimodal.model import OmniModel

    torch.manual_seed(0)
    model = OmniModel.from_config({"decoder": tiny_decoder_cfg(), "modalities": {"vision": tiny_vision_cfg()}},
                                  texts=texts_of([vision_demo["train"]]))
    L.seed_everything(0)
    files = {"train": [vision_demo["train"]], "val": [], "test": []}
    dm = OmniDataModule({"batch_size": 8, "num_workers": 0, "max_length": 128, "packing": True, "seed": 0},
                        files, model.tokenizer, model.modalities, model.placeholder_ids)
    module = OmniLightningModule(model, {"lr": 1e-3, "warmup_ratio": 0.0}, compile=compile)
    losses = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Losses()])
    trainer.fit(module, datamodule=dm)
    return model, losses


def test_compiled_decoder_trains_like_the_eager_one_and_is_eager_after_fit(vision_demo):
    """A recording backend proves the compiled forward ran; losses and weights match eager
    training; parameter names are unchanged (checkpoints load either way)."""
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled, compiled_losses = _fit(vision_demo, {"backend": recording_backend})
    eager, eager_losses = _fit(vision_demo, False)
    assert graphs, "the decoder's forward never went through torch.compile"
    assert len(compiled_losses) == len(eager_losses) == 4
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    compiled_state, eager_state = compiled.state_dict(), eager.state_dict()
    assert list(compiled_state) == list(eager_state)
    for key, value in eager_state.items():
        torch.testing.assert_close(compiled_state[key], value, rtol=1e-4, atol=1e-6, msg=key)

    assert compiled.decoder._compiled_call_impl is None  # eager again: generation does not recompile
    n = len(graphs)
    compiled.eval()
    ids = compiled.tokenizer("hello", return_tensors="pt").input_ids
    compiled.decoder(input_ids=ids)
    assert len(graphs) == n


def test_trainer_compile_reaches_the_run_from_the_config(vision_demo, tmp_path):
    """``trainer.compile`` is omnimodal's key (Lightning's Trainer would reject it) and the run
    trains, evaluates and saves a model that loads back."""
    data = [f"data.{split}={vision_demo[split]}" for split in ("train", "val", "test")]
    cfg = omnimodal.compose(["modalities=[vision]", *TINY, *data, "trainer.max_steps=2", "trainer.max_epochs=1",
                             "trainer.compile={backend: aot_eager}"])
    torch._dynamo.reset()
    run = omnimodal.fit(cfg, output_dir=tmp_path / "run")
    assert run.summary["global_step"] == 2 and run.eval["vision"]["overall"]["n"] > 0
    loaded = omnimodal.load(run.dir / "model").model
    assert list(loaded.state_dict()) == list(run.model.state_dict())
