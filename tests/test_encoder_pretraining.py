"""Encoder pre-training: which records qualify, what trains, and the run's switch."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

from omnimodal.data.records import Record
from omnimodal.errors import ConfigError
from omnimodal.train import pretrain_config
from omnimodal.training.encoder_pretraining import answer_sets, pretrain_encoders
from omnimodal.training.module import apply_stage

from .conftest import PYTHON, cli_env


def _record(question: str, answer: str, kind: str | None = None, media: int = 1, source: str = "f.jsonl:1",
            image: str = "0.png") -> Record:
    parts = [{"type": "image", "path": image if i == 0 else f"{i}.png"} for i in range(media)] + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return Record(messages, source, kind=kind)


def _turn(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def test_answer_sets_group_by_medium_and_question_and_count_what_is_left_out():
    records = [
        _record("What colour?", "red", kind="colour", image="a.png"),
        _record("What colour is it?", "blue", kind="colour", image="b.png"),  # same kind, other wording: one question
        _record("How many?", "two", image="a.png"),  # a second question about a.png: the same item
        _record("What colour?", "green", image="c.png"),  # no kind: its text is the question
        _record("Always?", "yes"),  # its question has one answer
        _record("Both?", "yes", media=2),
        _record("Both?", "no", media=0),
    ]
    multi = _record("How many?", "three", kind="count", image="d.png")  # a conversation: turns' own text
    multi.messages += _turn("What colour?", "red") + _turn("Always?", "yes")
    records.append(multi)
    asks_first = Record(_turn("How many?", "two") + _record("What colour?", "red", image="e.png").messages, "f.jsonl:9")
    records.append(asks_first)  # its medium is not in the first turn
    records += [_record("Describe it.", f"answer {i}", image=f"{i}.png") for i in range(5)]  # open-ended: 5 > max_answers=4

    sets, skipped = answer_sets(records, {"image": "vision"}, max_answers=4)

    vision = sets["vision"]
    assert vision.questions == ["colour", "How many?", "What colour?"]
    assert vision.answers == ["red", "blue", "two", "green", "three"]
    assert [(part["path"], pairs) for _, part, pairs in vision.items] == [
        ("a.png", [(0, 0), (1, 2)]), ("b.png", [(0, 1)]), ("c.png", [(2, 3)]), ("d.png", [(1, 4), (2, 0)])]
    assert vision.labels == 6
    assert skipped == {"its question has one answer": 2, "not exactly one medium": 3,
                       "its question has more than 4 distinct answers": 5}
    odd = Record([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "f.jsonl:3")
    assert answer_sets([odd], {"image": "vision"})[1] == {"not user turns each answered once": 1}


def _colour_records(vision_demo) -> list[Record]:
    from omnimodal.data.records import read_jsonl

    return [r for r in read_jsonl(vision_demo["train"], {"image": "vision"}) if r.kind == "colour"]


def test_pretraining_trains_encoder_and_projector_only(tiny_model, vision_demo):
    model = tiny_model
    apply_stage(model, {"name": "full"}, {})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = pretrain_encoders(model, _colour_records(vision_demo), {"epochs": 30, "lr": 3e-3, "batch_size": 8})

    result = summary["vision"]
    # 40 images, five colours (chance 20%): 77.5% in the last epoch's running count here.
    assert result["media"] == result["labels"] == 40 and result["questions"] == 1 and result["answers"] == 5
    assert result["train_accuracy_last_epoch"] >= 0.6, result
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"encoders", "projectors"}


def test_pretraining_leaves_a_frozen_encoder_alone(tiny_model, vision_demo):
    model = tiny_model
    apply_stage(model, {"name": "align", "train_encoders": False, "train_decoder": False}, {})
    encoder = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    projector = {k: v.clone() for k, v in model.projectors.state_dict().items()}
    pretrain_encoders(model, _colour_records(vision_demo), {"epochs": 1, "batch_size": 8})
    assert all(torch.equal(v, model.encoders.state_dict()[k]) for k, v in encoder.items())
    assert any(not torch.equal(v, model.projectors.state_dict()[k]) for k, v in projector.items())

    model.set_trainable("projectors.vision", False)
    assert pretrain_encoders(model, _colour_records(vision_demo), {"epochs": 1}) == {}  # nothing trains: nothing to do


def test_media_kept_in_memory_train_exactly_as_media_prepared_every_epoch(vision_demo):
    from omnimodal.model import OmniModel

    from .conftest import texts_of, tiny_decoder_cfg, tiny_vision_cfg

    runs = {}
    for memory_mb in (2048, 0.05, 0):  # all kept; over the budget after the first batch; never
        torch.manual_seed(0)
        model = OmniModel.from_config({"decoder": tiny_decoder_cfg(), "modalities": {"vision": tiny_vision_cfg()}},
                                      texts=texts_of([vision_demo["train"]]))
        apply_stage(model, {"name": "full"}, {})
        summary = pretrain_encoders(model, _colour_records(vision_demo), {"epochs": 3, "batch_size": 8, "memory_mb": memory_mb})
        runs[memory_mb] = summary["vision"], model.encoders.state_dict()
    assert runs[2048][0]["media_kept_in_memory_mb"] == pytest.approx(40 * 3 * 64 * 64 * 4 / 2**20, abs=0.1)
    assert runs[0.05][0]["media_kept_in_memory_mb"] is None and runs[0][0]["media_kept_in_memory_mb"] is None
    for memory_mb in (0.05, 0):
        assert all(torch.equal(v, runs[memory_mb][1][k]) for k, v in runs[2048][1].items()), memory_mb


def test_a_medium_that_fails_to_load_stops_pretraining_or_is_skipped_and_reported(tmp_path, vision_demo):
    import dataclasses

    from omnimodal.data.records import SkipReport
    from omnimodal.errors import DataError
    from omnimodal.model import OmniModel

    from .conftest import texts_of, tiny_decoder_cfg, tiny_vision_cfg

    def broken(record, path):
        msgs = [{"role": "user", "content": [{"type": "image", "path": str(path)}, *record.messages[0]["content"][1:]]},
                *record.messages[1:]]
        return dataclasses.replace(record, messages=msgs)

    records = _colour_records(vision_demo)
    for i in (3, 17):
        (tmp_path / f"broken{i}.png").write_bytes(b"not a png")
        records[i] = broken(records[i], tmp_path / f"broken{i}.png")

    def model():
        torch.manual_seed(0)
        m = OmniModel.from_config({"decoder": tiny_decoder_cfg(), "modalities": {"vision": tiny_vision_cfg()}},
                                  texts=texts_of([vision_demo["train"]]))
        apply_stage(m, {"name": "full"}, {})
        return m

    named = "|".join(rf"{re.escape(records[i].source)} \(image\): not a readable image .*broken{i}.png" for i in (3, 17))
    with pytest.raises(DataError, match=named):  # whichever the shuffled order reaches first
        pretrain_encoders(model(), records, {"epochs": 1, "batch_size": 8})

    report = SkipReport()
    summary = pretrain_encoders(model(), records, {"epochs": 3, "batch_size": 8}, on_error="skip", report=report)["vision"]
    assert summary["media"] == 38 and summary["media_skipped"] == 2
    assert report.total == 2 and report.sources == {records[i].source for i in (3, 17)}, report.summary()
    assert all(why.startswith("MediaError: not a readable image") for why in report.reasons), report.reasons

    records = [broken(r, tmp_path / "broken3.png") for r in records]  # nothing loads: an error, not nothing learned
    with pytest.raises(DataError, match="every one of its 1 media failed to load"):
        pretrain_encoders(model(), records, {"epochs": 1}, on_error="skip", report=SkipReport())


def test_a_modality_can_opt_out_and_an_explicit_list_overrides_it(tiny_model, vision_demo):
    apply_stage(tiny_model, {"name": "full"}, {})
    tiny_model.modalities["vision"].cfg["pretrain"] = False  # as the demo ViT's config says
    before = {k: v.clone() for k, v in tiny_model.encoders.state_dict().items()}
    assert pretrain_encoders(tiny_model, _colour_records(vision_demo), {"epochs": 1}) == {}
    assert all(torch.equal(v, tiny_model.encoders.state_dict()[k]) for k, v in before.items())
    summary = pretrain_encoders(tiny_model, _colour_records(vision_demo), {"epochs": 1, "modalities": ["vision"]})
    assert summary["vision"]["media"] == 40


def test_pretraining_without_a_qualifying_record_names_the_modality_and_why(tiny_model):
    apply_stage(tiny_model, {"name": "full"}, {})
    open_ended = [_record("Describe it.", f"a long answer {i}") for i in range(40)]
    with pytest.raises(ConfigError, match=r"no vision training record .*more than 32 distinct answers: 40"):
        pretrain_encoders(tiny_model, open_ended, {"epochs": 1})
    with pytest.raises(ConfigError, match=r"pretrain_encoders.modalities: \['audio'\]"):
        pretrain_encoders(tiny_model, open_ended, {"epochs": 1, "modalities": ["audio"]})


@pytest.mark.parametrize(("overrides", "fresh", "epochs"), [
    ({}, True, 4),                                      # the built-in demo data, a model built here
    ({"data": {"train": "mine.jsonl"}}, True, 0),       # the user's own data: off unless asked
    ({}, False, 0),                                     # init_from / a given model: already trained
    ({"ckpt_path": "last"}, True, 0),                   # resuming: the checkpoint holds the weights
    ({"pretrain_encoders": {"epochs": 3}, "data": {"train": "mine.jsonl"}}, True, 3),
])
def test_auto_pretrains_only_a_fresh_model_on_the_demo_data(overrides, fresh, epochs):
    cfg = {"data": {"train": None}, "pretrain_encoders": {"epochs": "auto", "lr": 2e-3}}
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key in cfg else value
    assert pretrain_config(cfg, fresh=fresh) == {"epochs": epochs, "lr": 2e-3}
    with pytest.raises(ConfigError, match="pretrain_encoders.epochs must be auto or a whole number"):
        pretrain_config({"data": {}, "pretrain_encoders": {"epochs": "two"}}, fresh=True)


def test_cli_run_pretrains_then_trains_and_reports_it(tmp_path, vision_demo):
    from .test_training import TINY

    run = tmp_path / "run"
    cmd = [PYTHON, "-m", "omnimodal.cli", "train", "modalities=[vision]", *TINY, "trainer.max_epochs=1",
           f"data.train={vision_demo['train']}", f"data.val={vision_demo['val']}", "data.test=null",
           "pretrain_encoders.epochs=2", "pretrain_encoders.modalities=[vision]",  # the demo ViT opts out by default
           "evaluate=false", f"hydra.run.dir={run}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((run / "result.json").read_text())["encoder_pretraining"]["vision"]
    # each image once, with every question asked about it
    assert report["epochs"] == 2 and 40 <= report["media"] < report["labels"] and report["questions"] == 4
    assert "encoder pre-training, vision:" in (run / "train.log").read_text()
    assert report["encoder_frozen_after"] is True  # pretrain_encoders.freeze_encoders defaults to true


def test_freeze_encoders_keeps_the_pretrained_encoder_through_training(tmp_path, vision_demo):
    from safetensors.torch import load_file

    from .test_training import TINY

    def train(run, *extra):
        cmd = [PYTHON, "-m", "omnimodal.cli", "train", "modalities=[vision]", *TINY, "trainer.max_epochs=1",
               f"data.train={vision_demo['train']}", "data.val=null", "data.test=null", "evaluate=false",
               "pretrain_encoders.epochs=1", "pretrain_encoders.modalities=[vision]", f"hydra.run.dir={run}", *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return load_file(run / "model" / "model.safetensors"), done.stdout

    pretrained, _ = train(tmp_path / "pre", "trainer.max_steps=0")  # pre-training only: what the encoder learned
    frozen, table = train(tmp_path / "frozen")  # freeze_encoders: true, the default
    trained, _ = train(tmp_path / "trained", "pretrain_encoders.freeze_encoders=false")
    encoder = [k for k in pretrained if k.startswith("encoders.vision.")]
    projector = [k for k in pretrained if k.startswith("projectors.vision.")]
    assert encoder and projector
    assert all(torch.equal(pretrained[k], frozen[k]) for k in encoder)  # BatchNorm statistics included
    assert not all(torch.equal(pretrained[k], frozen[k]) for k in projector)
    assert not all(torch.equal(pretrained[k], trained[k]) for k in encoder)
    row = next(line.split() for line in table.splitlines() if line.startswith("encoders.vision "))
    assert row[1] == "0" and row[-1] == "eval", table  # the parameter table: nothing trainable, eval mode
    report = json.loads((tmp_path / "frozen" / "result.json").read_text())["encoder_pretraining"]["vision"]
    assert report["encoder_frozen_after"] is True


def test_outside_torch_function_modes_pops_them_for_the_block_and_restores_them():
    from omnimodal.training.module import outside_torch_function_modes

    with torch.device("meta"):
        with outside_torch_function_modes():
            assert torch.overrides._len_torch_function_stack() == 0
            assert torch.zeros(1).device.type == "cpu"
        assert torch.zeros(1).device.type == "meta"  # the caller's mode is back
    with pytest.raises(ValueError), torch.device("meta"):
        with outside_torch_function_modes():
            raise ValueError
    assert torch.overrides._len_torch_function_stack() == 0


def test_pretraining_in_a_lightning_fit_runs_outside_its_tensor_init_modes(monkeypatch, vision_demo):
    """Lightning calls configure_model inside torch.device(...) and its _EmptyInit modes, which
    route every torch call through Python (the molecule demo's pre-training: 38 s there, 29 s
    outside). Pre-training must not run inside them."""
    import lightning as L

    from omnimodal.training import encoder_pretraining
    from omnimodal.training.module import OmniLightningModule

    from .test_grouping import _tiny_train
    from .test_inference import build_tiny_model

    seen = []
    real = encoder_pretraining.pretrain_encoders

    def spy(*args, **kwargs):
        seen.append(torch.overrides._len_torch_function_stack())
        return real(*args, **kwargs)

    monkeypatch.setattr(encoder_pretraining, "pretrain_encoders", spy)
    model = build_tiny_model(vision_demo)
    module = OmniLightningModule(model, {"lr": 1e-3}, pretrain_encoders={"epochs": 1, "batch_size": 8, "modalities": ["vision"]})
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=_tiny_train(model, vision_demo))
    assert seen == [0] and module.pretrain_summary["vision"]["epochs"] == 1
