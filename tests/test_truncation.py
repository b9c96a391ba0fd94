"""Every dropped thing counted: truncation reports what it cut, or is an error when asked."""

from __future__ import annotations

import json

import lightning as L
import pytest

from omnimodal.data.dataset import ConversationDataset
from omnimodal.data.records import Record
from omnimodal.errors import SampleTooLongError
from omnimodal.training.datamodule import OmniDataModule
from omnimodal.training.module import OmniLightningModule

LONG = " ".join(["the shape is a blue circle near the top left corner"] * 6)


def _two_turns(vision_demo) -> Record:
    """image + question, long answer, second image + question, short answer."""
    r = json.loads(vision_demo["train"].read_text().splitlines()[0])
    image = str(vision_demo["train"].parent / r["messages"][0]["content"][0]["path"])
    messages = [
        {"role": "user", "content": [{"type": "image", "path": image}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": LONG}]},
        {"role": "user", "content": [{"type": "image", "path": image}, {"type": "text", "text": "And now?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    return Record(messages, source="long.jsonl:7")


def _dataset(model, records, max_length, on_truncate="count"):
    return ConversationDataset(records, model.tokenizer, model.modalities, model.placeholder_ids, max_length,
                               on_truncate=on_truncate)


def test_truncation_counts_what_it_drops(tiny_model, vision_demo):
    record = _two_turns(vision_demo)
    full = _dataset(tiny_model, [record], None)[0]
    labelled = [i for i, lab in enumerate(full["labels"]) if lab != -100]
    first_answer_end = next(i for i, j in zip(labelled, labelled[1:]) if j != i + 1)  # last token of answer 1
    assert full["events"] == {}

    sample = _dataset(tiny_model, [record], first_answer_end + 3)[0]
    events = sample["events"]
    assert events["truncation.samples"] == 1
    assert events["truncation.media_dropped"] == 1 and len(sample["items"]) == 1
    assert events["truncation.answer_turns_dropped"] == 1
    dropped = sum(lab != -100 for lab in full["labels"]) - sum(lab != -100 for lab in sample["labels"])
    assert events["truncation.label_tokens_dropped"] == dropped > 0

    cut_inside = _dataset(tiny_model, [record], first_answer_end - 5)[0]["events"]
    assert cut_inside["truncation.answer_turns_cut"] == 1


def test_on_truncate_error_names_the_record(tiny_model, vision_demo):
    with pytest.raises(SampleTooLongError, match=r"long\.jsonl:7: .* exceed data\.max_length=60; truncating would drop .*media_dropped=1"):
        _dataset(tiny_model, [_two_turns(vision_demo)], 60, on_truncate="error")[0]
    assert _dataset(tiny_model, [_two_turns(vision_demo)], 4096, on_truncate="error")[0]["events"] == {}


def test_training_reports_truncation_over_one_pass(tiny_model, vision_demo, tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"messages": _two_turns(vision_demo).messages}) + "\n" for _ in range(4)))
    files = {"train": [data], "val": [], "test": []}
    dm = OmniDataModule({"batch_size": 2, "num_workers": 0, "max_length": 60, "seed": 0}, files,
                        tiny_model.tokenizer, tiny_model.modalities, tiny_model.placeholder_ids)
    module = OmniLightningModule(tiny_model, {"lr": 1e-3})
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(module, datamodule=dm)
    assert module.data_events["truncation.samples"] == 4
    assert module.data_events["truncation.media_dropped"] == 4
