"""Training: loss goes down, stages freeze the right parts (in eval mode), the CLI runs end to end."""

import json
import subprocess

import lightning as L
import pytest
import torch

from omnimodal.model import OmniModel
from omnimodal.training.datamodule import OmniDataModule
from omnimodal.training.module import OmniLightningModule

from .conftest import PYTHON, cli_env

TINY = [
    "decoder.hidden_size=64", "decoder.intermediate_size=128", "decoder.num_hidden_layers=2",
    "decoder.num_attention_heads=4", "decoder.num_key_value_heads=4", "decoder.tokenizer.vocab_size=400",
    "modalities.vision.encoder.width=32", "modalities.vision.encoder.depth=1",
    "data.batch_size=8", "data.num_workers=0", "trainer.enable_progress_bar=false",
]


def _trainer(steps):
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)


def _dm(model, vision_demo, batch_size=8):
    files = {"train": [vision_demo["train"]], "val": [], "test": []}
    return OmniDataModule({"batch_size": batch_size, "num_workers": 0, "max_length": 128}, files, model.tokenizer, model.modalities, model.placeholder_ids)


def _mean_loss(model, dm):
    dm.setup("fit")
    model.eval()
    losses = []
    with torch.no_grad():
        for i, batch in enumerate(dm.train_dataloader()):
            losses.append(model(**batch).loss.item())
            if i == 3:
                break
    return sum(losses) / len(losses)


def test_short_training_lowers_the_loss(tiny_model, vision_demo):
    L.seed_everything(0)
    dm = _dm(tiny_model, vision_demo)
    before = _mean_loss(tiny_model, dm)
    module = OmniLightningModule(tiny_model, {"lr": 3e-3, "warmup_ratio": 0.0})
    _trainer(40).fit(module, datamodule=dm)
    after = _mean_loss(tiny_model, dm)
    assert after < 0.6 * before, (before, after)


def test_align_stage_trains_only_projectors_and_frozen_parts_stay_in_eval(tiny_model, vision_demo):
    model = tiny_model
    enc_before = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    dec_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    proj_before = {k: v.clone() for k, v in model.projectors.state_dict().items()}
    module = OmniLightningModule(model, {"train_encoders": False, "train_decoder": False, "train_projectors": True, "lr": 1e-3})
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            m = pl_module.model
            seen.append((m.encoders["vision"].training, m.decoder.training, m.projectors["vision"].training))

    trainer = _trainer(3)
    trainer.callbacks.append(Spy())
    trainer.fit(module, datamodule=_dm(model, vision_demo))
    assert seen and all(s == (False, False, True) for s in seen)
    assert all(torch.equal(v, model.encoders.state_dict()[k]) for k, v in enc_before.items())
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in dec_before.items())
    assert any(not torch.equal(v, model.projectors.state_dict()[k]) for k, v in proj_before.items())


def test_encoder_switch_freezes_one_encoder(tiny_model):
    OmniLightningModule(tiny_model, {"train_encoders": True}, {"vision": {"train_encoder": False}})
    assert not any(p.requires_grad for p in tiny_model.encoders.parameters())
    assert all(p.requires_grad for p in tiny_model.decoder.parameters())


def test_save_and_load_roundtrip_gives_same_logits(tiny_model, vision_demo, tmp_path):
    from safetensors import safe_open

    dm = _dm(tiny_model, vision_demo)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    tiny_model.eval()
    tiny_model.save_pretrained(tmp_path / "m")
    loaded = OmniModel.from_pretrained(tmp_path / "m")
    assert torch.equal(tiny_model(**batch).logits, loaded(**batch).logits)
    cfg = json.loads((tmp_path / "m" / "omnimodal.json").read_text())
    assert cfg["format_version"] == 1
    assert cfg["modalities"]["vision"]["plugin"] == "vision"
    with safe_open(tmp_path / "m" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "decoder.model.embed_tokens.weight" in keys
    assert any(k.startswith("encoders.vision.") for k in keys)
    assert any(k.startswith("projectors.vision.") for k in keys)


@pytest.mark.slow
def test_cli_train_end_to_end_writes_eval_and_model(tmp_path, vision_demo):
    run = tmp_path / "run"
    data = [f"data.{split}={vision_demo[split]}" for split in ("train", "val", "test")]
    out = subprocess.run(
        [PYTHON, "-m", "omnimodal.cli", "train", *TINY, *data, "trainer.max_epochs=1", "trainer.max_steps=15",
         f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=cli_env(),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = json.loads((run / "eval.json").read_text())
    assert set(table["vision"]) >= {"colour", "shape", "count", "overall"}
    assert 0.0 <= table["vision"]["overall"]["accuracy"] <= 1.0 and "blind" in table["vision"]["overall"]
    assert "accuracy" in out.stdout and "blind" in out.stdout
    assert (run / "model" / "omnimodal.json").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    # The checkpoint loads under weights_only (plain containers, no OmegaConf objects).
    torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    ev = subprocess.run([PYTHON, "-m", "omnimodal.cli", "eval", str(run)], capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr
    assert "overall" in ev.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("stage=bogus", "Available options in 'stage'"),
        ("data.batch_sise=4", "batch_sise"),
        ("projector@modalities.vision.projector=mpl", "Available options in 'projector'"),
    ],
)
def test_config_errors_name_the_problem(override, message):
    out = subprocess.run([PYTHON, "-m", "omnimodal.cli", "train", override], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert message in out.stderr + out.stdout


def test_demo_data_is_built_once_and_reused(tmp_path):
    from omnimodal.demo import prepare_demo
    from omnimodal.hookspecs import hookimpl
    from omnimodal.plugins import register_plugin, unregister_plugin
    from omnimodal.specs import DemoSpec

    calls = []

    def builder(root, seed):
        calls.append(seed)
        for split in ("train", "val", "test"):
            (root / f"{split}.jsonl").write_text("{}\n")
        return {s: root / f"{s}.jsonl" for s in ("train", "val", "test")}

    class Demo:
        @hookimpl
        def omnimodal_demo_data(self):
            return [DemoSpec("vision", f"{__name__}:_BUILDER", version="t")]

    globals()["_BUILDER"] = builder
    register_plugin(Demo(), name="demo-test")
    try:
        a = prepare_demo(["vision"], tmp_path, seed=3)
        b = prepare_demo(["vision"], tmp_path, seed=3)
    finally:
        unregister_plugin("demo-test")
    assert calls == [3] and a == b and a["train"][0].is_file()
