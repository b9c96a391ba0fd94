"""Audio inside OmniModel: audio and vision in one batch and one conversation, saving and reloading."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ._require import require

require("torchaudio", "audio")
require("soundfile", "audio")

from omnimodal.data.dataset import Collator, ConversationDataset, training_texts  # noqa: E402
from omnimodal.data.records import Record, read_jsonl  # noqa: E402

from .conftest import tiny_decoder_cfg, tiny_vision_cfg  # noqa: E402
from .test_audio import save_tiny_whisper, tone  # noqa: E402

PART_TYPES = {"image": "vision", "audio": "audio"}


def tiny_audio_cfg(encoder: dict | None = None) -> dict:
    return {
        "encoder": encoder or {"kind": "conv", "width": 32, "depth": 1, "heads": 2, "mlp_ratio": 2},
        "projector": {"kind": "pool", "stride": 2, "hidden_dim": None},
        "sample_rate": 16000,
        "max_duration": 30.0,
        "n_mels": 80,
        "train_encoder": True,
    }


@pytest.fixture(scope="module")
def audio_demo(tmp_path_factory) -> dict[str, Path]:
    """A tiny tone set; its training records are multi-turn (one conversation per clip)."""
    from omnimodal_audio.demo import build

    return build(tmp_path_factory.mktemp("audio_demo"), seed=0, sizes={"train": 8, "val": 2, "test": 2}, multi_turn=True)


def texts(*paths: Path) -> list[str]:
    out = [text for p in paths for text in training_texts(read_jsonl(p, PART_TYPES))]
    return out + ["Compare the sound and the picture.", "Which came first?"]


def build_model(vision_demo, audio_demo, audio_cfg: dict | None = None):
    from omnimodal.model import OmniModel

    torch.manual_seed(0)
    cfg = {"decoder": tiny_decoder_cfg(), "modalities": {"vision": tiny_vision_cfg(), "audio": audio_cfg or tiny_audio_cfg()}}
    return OmniModel.from_config(cfg, texts=texts(vision_demo["train"], audio_demo["train"]))


def mixed_batch(model, vision_demo, audio_demo):
    """Vision-only, audio-only and one conversation holding both (two clips of different lengths)."""
    image = str(vision_demo["train"].parent / "images/train/00000.png")
    clip_a = str(audio_demo["train"].parent / "clips/train/00000.wav")
    clip_b = str(audio_demo["train"].parent / "clips/train/00001.wav")
    records = read_jsonl(vision_demo["train"], PART_TYPES)[:1] + read_jsonl(audio_demo["train"], PART_TYPES)[:1]
    both = Record(
        [
            {"role": "user", "content": [
                {"type": "audio", "path": clip_a},
                {"type": "text", "text": "Compare the sound and the picture."},
                {"type": "image", "path": image},
                {"type": "audio", "path": clip_b},
            ]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
            {"role": "user", "content": [{"type": "text", "text": "Which came first?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
        ],
        "mem:both",
    )  # fmt: skip
    records.append(both)
    ds = ConversationDataset(records, model.tokenizer, model.modalities, model.placeholder_ids)
    return Collator(model.modalities, model.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])


def test_training_step_with_audio_and_vision_in_one_batch_and_conversation(vision_demo, audio_demo):
    model = build_model(vision_demo, audio_demo).train()
    batch = mixed_batch(model, vision_demo, audio_demo)
    assert set(batch["media"]) == {"vision", "audio"}
    audio_tokens = batch["media_tokens"]["audio"]
    assert len(audio_tokens) == 3 and len(set(audio_tokens)) > 1  # clips of different lengths
    audio_id = model.modality_token["audio"]
    assert int((batch["input_ids"] == audio_id).sum()) == sum(audio_tokens)
    assert int((batch["input_ids"][2] == audio_id).sum()) == sum(audio_tokens[1:])

    # pseudo-tokens land at their placeholders, in conversation order, padding never spliced
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["media"])
        tokens, mask = model.encode_media("audio", batch["media"]["audio"])
    assert mask.sum(1).tolist() == audio_tokens
    pos = (batch["input_ids"][2] == audio_id).nonzero().squeeze(1)
    first, second = audio_tokens[1], audio_tokens[2]
    torch.testing.assert_close(embeds[2, pos[:first]], tokens[1, :first])
    torch.testing.assert_close(embeds[2, pos[first:]], tokens[2, :second])
    image_pos = (batch["input_ids"][2] == model.modality_token["vision"]).nonzero().squeeze(1)
    assert pos[first - 1] < image_pos[0] < pos[first]  # audio, text, image, audio

    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for part in ("encoders.audio", "projectors.audio", "encoders.vision", "projectors.vision"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(part)]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), part
    opt.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("encoders.audio.convs") for n in moved)
    assert any(n.startswith("encoders.vision") for n in moved)


def test_lightning_fit_step_on_both_demo_sets(vision_demo, audio_demo, tmp_path):
    import lightning as L

    from omnimodal.training.datamodule import OmniDataModule
    from omnimodal.training.module import OmniLightningModule

    model = build_model(vision_demo, audio_demo)
    L.seed_everything(0)
    files = {"train": [vision_demo["train"], audio_demo["train"]], "val": [audio_demo["val"], vision_demo["val"]]}
    dm = OmniDataModule({"batch_size": 32, "eval_batch_size": 8, "num_workers": 0}, files, model.tokenizer, model.modalities, model.placeholder_ids)
    module = OmniLightningModule(model, {"lr": 1e-3}, {"vision": tiny_vision_cfg(), "audio": tiny_audio_cfg()})
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", devices=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    before = model.encoders["audio"].convs[0].weight.detach().clone()
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    assert not torch.equal(before, model.encoders["audio"].convs[0].weight)


@pytest.mark.parametrize("kind", ["conv", "whisper"])
def test_saved_model_with_audio_reloads_without_the_original_path(vision_demo, audio_demo, tmp_path, kind):
    from omnimodal.model import OmniModel

    if kind == "whisper":
        path = save_tiny_whisper(tmp_path / "tiny-whisper")
        cfg = tiny_audio_cfg({"kind": "whisper", "path": str(path), "feature_layer": -1})
    else:
        cfg = tiny_audio_cfg()
    model = build_model(vision_demo, audio_demo, cfg).eval()
    model.save_pretrained(tmp_path / "saved")
    if kind == "whisper":
        shutil.rmtree(path)  # the saved dir (weights, whisper_config.json, extractor) must be enough
        assert (tmp_path / "saved" / "assets" / "audio" / "preprocessor_config.json").is_file()
    loaded = OmniModel.from_pretrained(tmp_path / "saved")
    raw = {"array": tone(660.0, 0.7), "sample_rate": 22050}
    a = model.modalities["audio"].prepare(raw, "clip")
    b = loaded.modalities["audio"].prepare(raw, "clip")
    assert (a.length, a.num_tokens) == (b.length, b.num_tokens)
    torch.testing.assert_close(a.features["input_features"], b.features["input_features"])
    with torch.no_grad():
        ta, ma = model.encode_media("audio", model.modalities["audio"].collate([a.features]))
        tb, mb = loaded.encode_media("audio", loaded.modalities["audio"].collate([b.features]))
    assert int(ma.sum()) == a.num_tokens
    torch.testing.assert_close(ta, tb)
    torch.testing.assert_close(ma, mb)
