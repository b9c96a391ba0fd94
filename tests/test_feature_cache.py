"""Feature cache: keys that never read stale features, checksummed entries, cached == uncached
training, and warm-only training that never builds the frozen tower."""

from __future__ import annotations

import copy

import pytest
import torch

import omnimodal
from omnimodal.data import feature_cache as fc
from omnimodal.errors import ConfigError, DataError
from omnimodal.model import OmniModel, build_modalities

from .conftest import tiny_vision_cfg

TINY = [
    "modalities=[vision]", "stage=align",
    "decoder.hidden_size=64", "decoder.intermediate_size=128", "decoder.num_hidden_layers=2",
    "decoder.num_attention_heads=4", "decoder.num_key_value_heads=4", "decoder.tokenizer.vocab_size=400",
    "data.batch_size=8", "data.num_workers=0", "trainer.enable_progress_bar=false",
    "evaluate=false", "save_model=false", "trainer.max_epochs=2",
]


def _numerics(precision="32-true", dtype=None):
    return fc.Numerics(dtype, precision, "cpu")


def _vision(**changes):
    cfg = tiny_vision_cfg()
    cfg.update(changes)
    return build_modalities({"vision": cfg})["vision"]


def _item(modality, colour=(200, 10, 10)):
    import numpy as np

    arr = np.zeros((40, 40, 3), np.uint8)
    arr[10:30, 10:30] = colour
    return modality.prepare(arr, "item-1")


def test_changed_content_preprocessing_weights_or_precision_is_a_miss():
    vision = _vision()
    torch.manual_seed(0)
    encoder = vision.build_encoder()
    base_item = fc.item_key(_item(vision).features)
    assert fc.item_key(_item(vision).features) == base_item  # the same content: the same key
    assert fc.item_key(_item(vision, colour=(200, 10, 11)).features) != base_item  # one pixel value changed

    moved = _vision(mean=[0.4, 0.5, 0.5])  # a preprocessing setting changes the features and the config
    assert fc.item_key(_item(moved).features) != base_item
    weights = fc.weights_hash(encoder)
    base = fc.context_key(vision.cfg, _numerics(), weights)
    assert fc.context_key(moved.cfg, _numerics(), weights) != base
    assert fc.context_key(_vision(resize="pad").cfg, _numerics(), weights) != base

    with torch.no_grad():
        next(encoder.parameters()).view(-1)[0] += 1e-3  # one weight changed
    assert fc.context_key(vision.cfg, _numerics(), fc.weights_hash(encoder)) != base
    assert fc.context_key(vision.cfg, _numerics("bf16-mixed"), weights) != base
    assert fc.context_key(vision.cfg, _numerics(dtype="bf16"), weights) != base
    assert fc.context_key(vision.cfg, fc.Numerics(None, "32-true", "cuda"), weights) != base
    # The projector and the trainable switch are not part of the key.
    other_head = _vision(projector={"kind": "linear"}, train_encoder=False)
    assert fc.context_key(other_head.cfg, _numerics(), weights) == base


def _fill(tmp_path, n=3):
    store = fc.FeatureCache(tmp_path / "cache")
    for i in range(n):
        store.put(f"ctx-{i}", torch.full((4, 8), float(i)), torch.ones(4, dtype=torch.bool))
    return store, store.flush()


def test_entries_are_read_only_from_shards_committed_before_the_snapshot(tmp_path):
    import time

    store, _ = _fill(tmp_path)
    cutoff = time.time_ns()
    store.put("ctx-late", torch.zeros(2, 8), torch.ones(2, dtype=torch.bool))
    store.flush()  # committed after the cutoff: the next epoch's
    assert store.snapshot(cutoff) == 3 and "ctx-late" not in store
    features, mask = store.read("ctx-2")
    assert torch.equal(features, torch.full((4, 8), 2.0)) and mask.all()
    assert store.snapshot(time.time_ns()) == 4


def test_a_flipped_byte_in_a_shard_is_detected_and_the_entry_recomputed(tmp_path):
    import time

    store, shard = _fill(tmp_path)
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's data: safetensors itself loads it silently
    shard.write_bytes(bytes(data))
    fresh = fc.FeatureCache(tmp_path / "cache")
    fresh.snapshot(time.time_ns())
    results = [fresh.read(f"ctx-{i}") for i in range(3)]
    assert sum(r is None for r in results) == 1
    assert len(fresh.report.bad) == 1 and "checksum mismatch" in fresh.report.bad[0]

    # Through the model's path: the bad entry is a miss, recomputed by the encoder and reported.
    bad = next(i for i, r in enumerate(results) if r is None)
    fresh.snapshot(time.time_ns())
    cache = fc.ModalityCache("toy", fresh, "ctx")
    calls = []

    class Encoder(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x, torch.ones(x.shape[:2], dtype=torch.bool)

    encoder = Encoder()

    items = [{"x": torch.full((4, 8), 7.0)} for _ in range(3)]
    batch = {fc.CACHE_KEY: {"keys": ["0", "1", "2"], "sources": ["a", "b", "c"], "items": items}}
    features, _ = cache.encode(encoder, lambda its: {"x": torch.stack([it["x"] for it in its])}, batch, torch.float32)
    assert calls == [1]
    assert torch.equal(features[bad], torch.full((4, 8), 7.0))
    assert len(fresh.report.bad) == 2


def test_a_torn_shard_is_reported_not_used(tmp_path):
    import time

    _, shard = _fill(tmp_path)
    shard.write_bytes(shard.read_bytes()[:-40])
    fresh = fc.FeatureCache(tmp_path / "cache")
    assert fresh.snapshot(time.time_ns()) == 0
    assert fresh.report.bad and "unreadable" in fresh.report.bad[0]


def test_require_mode_names_the_missing_item(tmp_path):
    store = fc.FeatureCache(tmp_path / "cache")
    store.snapshot(0)
    cache = fc.ModalityCache("vision", store, "ctx", mode="require")
    batch = {fc.CACHE_KEY: {"keys": ["k"], "sources": ["train.jsonl:7: message 0 part 0 (image)"], "items": [{}]}}
    with pytest.raises(DataError, match=r"train.jsonl:7: message 0 part 0"):
        cache.resolve(batch)


VIT = ["modalities.vision.encoder.width=32", "modalities.vision.encoder.depth=1"]


def _fit(vision_demo, tmp_path, name, *extra):
    data = [f"data.{split}={vision_demo[split]}" for split in ("train", "val", "test")]
    cfg = omnimodal.compose([*TINY, *data, *extra])
    return omnimodal.fit(cfg, output_dir=tmp_path / name)


def _projectors(run):
    return {k: v.detach().clone() for k, v in run.model.state_dict().items() if k.startswith("projectors.")}


@pytest.mark.slow
def test_cached_and_uncached_training_give_the_same_losses_and_weights(vision_demo, tmp_path):
    cache = f"data.feature_cache={tmp_path / 'cache'}"
    plain = _fit(vision_demo, tmp_path, "plain", *VIT)
    cold = _fit(vision_demo, tmp_path, "cold", *VIT, cache)  # epoch 0 computes and writes, epoch 1 reads
    warm = _fit(vision_demo, tmp_path, "warm", *VIT, cache)  # every item a hit from the first step
    assert cold.summary["feature_cache"]["hits"] > 0 and cold.summary["feature_cache"]["misses"] > 0
    assert warm.summary["feature_cache"]["misses"] == 0
    for run in (cold, warm):
        assert run.metrics["train/loss"] == pytest.approx(plain.metrics["train/loss"], rel=1e-5)
        assert run.metrics["val/loss"] == pytest.approx(plain.metrics["val/loss"], rel=1e-5)
        for key, value in _projectors(plain).items():
            torch.testing.assert_close(_projectors(run)[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_warm_only_training_never_builds_the_frozen_tower(vision_demo, tmp_path, monkeypatch):
    import transformers
    from omnimodal_vision.modality import VisionModality

    tower = tmp_path / "clip"
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
    )).save_pretrained(tower)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tower)
    clip = ["vision/encoder@modalities.vision.encoder=clip", f"modalities.vision.encoder.path={tower}",
            f"data.feature_cache={tmp_path / 'cache'}", "trainer.max_epochs=1"]

    with pytest.raises(ConfigError, match="omnimodal cache build"):  # nothing cached yet
        _fit(vision_demo, tmp_path, "empty", *clip, "data.feature_cache_mode=require")
    filled = _fit(vision_demo, tmp_path, "fill", *clip)
    assert filled.summary["feature_cache"]["written"] > 0

    built = []
    original = VisionModality.build_encoder
    monkeypatch.setattr(VisionModality, "build_encoder", lambda self, load_weights=True: built.append(1) or original(self, load_weights))
    warm = _fit(vision_demo, tmp_path, "warm", *clip, "data.feature_cache_mode=require", "save_model=true")
    summary = warm.summary["feature_cache"]
    assert summary["misses"] == 0 and summary["hits"] > 0
    assert summary["towers_not_built"]["vision"] > 0
    assert built == [1]  # once, after training, to save a whole model (checked against the cache)
    assert (warm.dir / "model" / "model.safetensors").is_file()
    loaded = OmniModel.from_pretrained(warm.dir / "model")
    torch.testing.assert_close(loaded.encoders["vision"].state_dict(), filled.model.encoders["vision"].state_dict())


def test_a_training_encoder_ignores_the_cache(caplog):
    cfg = {"data": {"feature_cache": "/tmp/never"}, "stage": {"name": "full", "train_encoders": True}, "trainer": {}}
    vision = _vision()
    with caplog.at_level("INFO", logger="omnimodal.data.feature_cache"):
        assert fc.plan(copy.deepcopy(cfg), {"vision": vision}) is None
    assert "vision ignores it: its encoder trains" in caplog.text


@pytest.mark.slow
def test_cache_build_fills_every_split_and_training_then_only_hits(vision_demo, tmp_path):
    import subprocess

    from .conftest import PYTHON, cli_env

    data = [f"data.{split}={vision_demo[split]}" for split in ("train", "val", "test")]
    cache = f"data.feature_cache={tmp_path / 'cache'}"
    out = subprocess.run([PYTHON, "-m", "omnimodal.cli", "cache", "build", *TINY, *VIT, *data, cache],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=cli_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "MiB per 1k items" in out.stdout + out.stderr
    assert "56 entries written" in out.stdout  # 40 train + 8 val + 8 test images
    warm = _fit(vision_demo, tmp_path, "warm", *VIT, cache)
    assert warm.summary["feature_cache"]["misses"] == 0 and warm.summary["feature_cache"]["written"] == 0


def test_a_resumed_epoch_reads_the_snapshot_its_epoch_started_with(tmp_path):
    import time
    from types import SimpleNamespace

    cfg = {"data": {"feature_cache": str(tmp_path / "cache")}, "stage": {"name": "align", "train_encoders": False}, "trainer": {}}
    setup = fc.plan(cfg, {"vision": _vision()})
    trainer = SimpleNamespace(current_epoch=0, global_rank=0, strategy=SimpleNamespace(broadcast=lambda x, src=0: x))
    callback = setup.callback()
    callback.on_train_epoch_start(trainer, None)
    setup.store.put("k-1", torch.zeros(2, 4), torch.ones(2, dtype=torch.bool))
    callback.on_save_checkpoint(trainer, None, {})  # flushed: computed before the checkpoint, kept on disk
    state = callback.state_dict()

    time.sleep(0.01)
    resumed = fc.plan(cfg, {"vision": _vision()})  # a new process after a kill, same epoch
    again = resumed.callback()
    again.load_state_dict(state)
    again.on_train_epoch_start(trainer, None)
    assert "k-1" not in resumed.store  # written during epoch 0: not read in epoch 0, resumed or not
    trainer.current_epoch = 1
    again.on_train_epoch_start(trainer, None)
    assert "k-1" in resumed.store
