"""Length-grouped batching: a pure function of (seed, epoch), sharded evenly across ranks,
resumable mid-epoch, with length estimates that need no media loading; and the LR schedule
ends exactly on the last optimizer step with grouping or packing on."""

from __future__ import annotations

import random

import lightning as L
import pytest

from omnimodal.data.dataset import ConversationDataset
from omnimodal.data.grouping import grouped_steps, rank_indices
from omnimodal.data.lengths import estimate_lengths
from omnimodal.data.records import Record
from omnimodal.training.datamodule import EpochShuffleSampler, LengthGroupedSampler, OmniDataModule
from omnimodal.training.module import OmniLightningModule

from .test_inference import build_tiny_model, wav_bytes


def _batches(stream, batch_size):
    return [stream[k:k + batch_size] for k in range(0, len(stream), batch_size)]


def _padding(batches, lengths):
    """Padded positions / all positions, rows padded to their batch's longest."""
    pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    return pad / sum(max(lengths[i] for i in b) * len(b) for b in batches)


@pytest.mark.parametrize("world", [1, 3])
def test_grouped_order_is_a_pure_function_of_seed_and_epoch_and_shards_evenly(world):
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(203)]
    bs = 4
    steps = grouped_steps(lengths, bs, seed=7, epoch=0, world=world, window=5)
    assert steps == grouped_steps(lengths, bs, seed=7, epoch=0, world=world, window=5)
    assert steps != grouped_steps(lengths, bs, seed=7, epoch=1, world=world, window=5)
    assert steps != grouped_steps(lengths, bs, seed=8, epoch=0, world=world, window=5)
    streams = [rank_indices(steps, r, world) for r in range(world)]
    # Every rank the same number of conversations and of batches; together they cover the data
    # (padded to a multiple of the world size by repeating, as DistributedSampler does).
    per_rank = -(-len(lengths) // world)
    assert all(len(s) == per_rank for s in streams)
    assert set().union(*streams) == set(range(len(lengths)))
    assert sum(map(len, streams)) - len(lengths) == per_rank * world - len(lengths)
    # Each rank's batches fall on step boundaries: batch k of every rank comes from step k.
    for r, s in enumerate(streams):
        assert [sorted(b) for b in _batches(s, bs)] == [sorted(st[r::world]) for st in steps]
    # The step holding the longest conversation comes first; batches are of similar lengths.
    assert lengths[steps[0][0]] == max(lengths)
    plain = EpochShuffleSampler(lengths, world, 0, seed=7)
    assert _padding(_batches(streams[0], bs), lengths) < 0.5 * _padding(_batches(list(plain), bs), lengths)


def test_grouped_sampler_resumes_mid_epoch_and_takes_the_next_epoch_when_exhausted():
    lengths = [(i * 37) % 101 for i in range(50)]
    sampler = LengthGroupedSampler(list(range(50)), lengths, batch_size=4, seed=3, window=3)
    assert len(sampler) == 50
    it = iter(sampler)
    head = [next(it) for _ in range(12)]
    state = it.state_dict()
    assert state == {"epoch": 0, "position": 12}
    again = iter(LengthGroupedSampler(list(range(50)), lengths, batch_size=4, seed=3, window=3))
    again.load_state_dict(state)
    assert head + list(again) == sampler.indices(0)
    done = iter(LengthGroupedSampler(list(range(50)), lengths, batch_size=4, seed=3, window=3))
    done.load_state_dict({"epoch": 0, "position": 50})
    assert list(done) == sampler.indices(1) != sampler.indices(0)


@pytest.fixture(scope="module")
def model(vision_demo):
    return build_tiny_model(vision_demo, extras=True)


def test_length_estimates_need_no_media_and_order_conversations_as_their_tokens_do(model, vision_demo, tmp_path):
    """Text tokens + media tokens from metadata: each estimate is the sample's real length less
    the chat template's own tokens (the same for every one-turn conversation)."""
    image = str(sorted((vision_demo["train"].parent / "images").rglob("*.png"))[0])
    (tmp_path / "short.wav").write_bytes(wav_bytes(0.3))
    (tmp_path / "long.wav").write_bytes(wav_bytes(1.7))
    records = []
    for i in range(8):
        media = [{"type": "image", "path": image}] if i % 2 else []
        if "audio" in model.modalities and i % 3:
            media.append({"type": "audio", "path": str(tmp_path / ("long.wav" if i % 3 == 2 else "short.wav"))})
        if "molecule" in model.modalities and i % 4 == 3:
            media.append({"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O" if i == 7 else "CCO"})
        messages = [{"role": "user", "content": [*media, {"type": "text", "text": "What is it?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "a red circle " * (1 + 3 * i % 7)}]}]
        records.append(Record(messages, source=f"mixed.jsonl:{i + 1}"))
    ds = ConversationDataset(records, model.tokenizer, model.modalities, model.placeholder_ids, 512)
    estimates = estimate_lengths(ds)
    real = [len(ds[i]["input_ids"]) for i in range(len(ds))]
    overhead = {r - e for r, e in zip(real, estimates)}
    assert len(overhead) == 1 and 0 < overhead.pop() < 20, (real, list(estimates))
    capped = estimate_lengths(ConversationDataset(records, model.tokenizer, model.modalities, model.placeholder_ids, 20))
    assert capped.max() == 20


def _tiny_train(model, vision_demo, **data):
    lines = vision_demo["train"].read_text().splitlines()[:20]
    path = vision_demo["train"].parent / "train20.jsonl"  # beside the demo's images
    path.write_text("\n".join(lines) + "\n")
    files = {"train": [path], "val": [], "test": []}
    cfg = {"batch_size": 8, "num_workers": 0, "max_length": 128, **data}
    return OmniDataModule(cfg, files, model.tokenizer, model.modalities, model.placeholder_ids)


@pytest.mark.parametrize(("data", "accumulate", "max_steps"), [
    pytest.param({"packing": True}, 1, -1, id="packing"),
    pytest.param({"group_by_length": True, "packing": True}, 2, -1, id="grouping+packing-accumulate2"),
    pytest.param({"group_by_length": True}, 1, 100, id="grouping-with-max_steps-beyond-the-epochs"),
])
def test_the_schedule_ends_exactly_on_the_last_optimizer_step(vision_demo, data, accumulate, max_steps):
    """20 conversations in batches of 8: 3 batches an epoch (the last one short), 2 epochs. The
    schedule's total must be the steps the run takes, so the cosine reaches 0 on the last one
    (also when a ``max_steps`` beyond the epochs' steps never binds)."""
    model = build_tiny_model(vision_demo)
    L.seed_everything(0)
    dm = _tiny_train(model, vision_demo, **data)
    module = OmniLightningModule(model, {"lr": 1e-3, "warmup_ratio": 0.0})
    seen = []

    class Count(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(len(batch["sources"]))

    trainer = L.Trainer(max_epochs=2, max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        accumulate_grad_batches=accumulate, callbacks=[Count()])
    trainer.fit(module, datamodule=dm)
    assert seen == [8, 8, 4] * 2  # every conversation once per epoch, batch_size per batch
    steps = 2 * -(-3 // accumulate)
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == steps == module._total_steps()
    assert sched.last_epoch == steps and sched.get_last_lr()[0] == 0.0



def test_data_workers_auto_loads_in_process_where_torch_threads_take_every_core(monkeypatch):
    import os

    import torch

    from omnimodal.errors import ConfigError
    from omnimodal.training.datamodule import data_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert data_workers("auto", "cpu") == 0 and data_workers(None, "cpu") == 0
    assert data_workers("auto", "cuda") == 1  # the GPU computes; the CPU is free to decode
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert data_workers("auto", "cpu") == 1  # a core left over for the worker
    assert data_workers(3, "cpu") == 3 and data_workers("0", "cuda") == 0  # a number as given
    for bad in (-1, "two", 1.5):
        with pytest.raises(ConfigError, match=r"data.num_workers=.*auto"):
            data_workers(bad, "cpu")
