"""Data: JSONL validation with file:line errors, label masking, truncation, skip reporting."""

import json

import pytest

from omnimodal.data.chat import IGNORE_INDEX
from omnimodal.data.dataset import ConversationDataset
from omnimodal.data.records import Record, SkipReport, read_jsonl
from omnimodal.errors import DataError, MediaError, SampleTooLongError

PT = {"image": "vision"}


def write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return p


def conv(user_parts, answer="red"):
    return {"messages": [{"role": "user", "content": user_parts}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "invalid JSON"),
        ({"foo": 1}, "must be an object with 'messages'"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        (conv([{"type": "video", "path": "a.mp4"}]), "unknown type 'video'"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role 'robot'"),
        (conv([{"type": "text"}]), "needs a string 'text'"),
    ],
)
def test_bad_record_names_file_line_and_reason(tmp_path, line, reason):
    p = write(tmp_path, [conv([{"type": "text", "text": "ok"}]), line])
    with pytest.raises(DataError, match=rf"d.jsonl:2: .*{reason}"):
        read_jsonl(p, PT)


def test_skip_mode_skips_and_reports(tmp_path):
    p = write(tmp_path, [conv([{"type": "text", "text": "ok"}]), "{bad", {"messages": [{"role": "user", "content": "q"}]}])
    report = SkipReport()
    records = read_jsonl(p, PT, on_error="skip", report=report)
    assert len(records) == 1
    assert report.total == 2
    assert "no assistant turn" in report.summary() and "invalid JSON" in report.summary()


def test_labels_only_on_assistant_turns(tiny_model, vision_demo):
    model = tiny_model
    img = str(vision_demo["train"].parent / "images/train/00000.png")
    rec = Record(
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "image", "path": img}, {"type": "text", "text": "What colour are the shapes?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
            {"role": "user", "content": [{"type": "text", "text": "How many shapes are there?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
        ],
        "mem:1",
    )
    ds = ConversationDataset([rec], model.tokenizer, model.modalities, model.placeholder_ids)
    s = ds[0]
    labelled = [t for t, lab in zip(s["input_ids"], s["labels"]) if lab != IGNORE_INDEX]
    end = model.tokenizer.eos_token
    assert model.tokenizer.decode(labelled) == f"red{end}two{end}"
    # every labelled position carries its own token
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(s["input_ids"], s["labels"]))
    assert s["input_ids"].count(model.modality_token["vision"]) == 16


def test_truncation_never_cuts_a_media_span(tiny_model, vision_demo):
    model = tiny_model
    img = str(vision_demo["train"].parent / "images/train/00000.png")
    rec = Record(
        [
            {"role": "user", "content": [{"type": "text", "text": "What colour are the shapes?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
            {"role": "user", "content": [{"type": "image", "path": img}, {"type": "text", "text": "And these?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "blue"}]},
        ],
        "mem:2",
    )
    full = ConversationDataset([rec], model.tokenizer, model.modalities, model.placeholder_ids)[0]
    start = full["input_ids"].index(model.modality_token["vision"])
    cut_inside = start + 5
    s = ConversationDataset([rec], model.tokenizer, model.modalities, model.placeholder_ids, max_length=cut_inside)[0]
    assert len(s["input_ids"]) == start  # cut moved to the span's start
    assert s["items"] == []  # the image is dropped with its span
    assert any(lab != IGNORE_INDEX for lab in s["labels"])  # the first answer is kept


def test_sample_that_cannot_fit_is_an_error(tiny_model, vision_demo):
    model = tiny_model
    img = str(vision_demo["train"].parent / "images/train/00000.png")
    rec = Record([{"role": "user", "content": [{"type": "image", "path": img}]}, {"role": "assistant", "content": [{"type": "text", "text": "red"}]}], "f.jsonl:3")
    ds = ConversationDataset([rec], model.tokenizer, model.modalities, model.placeholder_ids, max_length=10)
    with pytest.raises(SampleTooLongError, match="f.jsonl:3.*max_length=10"):
        ds[0]


def test_skip_mode_replaces_a_bad_sample_when_loaded_and_says_why(tiny_model, vision_demo):
    """on_error=skip: no pre-pass; the bad record is met when loaded, the next one stands in."""
    model = tiny_model
    img = str(vision_demo["train"].parent / "images/train/00000.png")
    bad = Record([{"role": "user", "content": [{"type": "image", "path": img}]}, {"role": "assistant", "content": [{"type": "text", "text": "red"}]}], "f.jsonl:3")
    good = Record([{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": [{"type": "text", "text": "red"}]}], "f.jsonl:4")
    ds = ConversationDataset([bad, good], model.tokenizer, model.modalities, model.placeholder_ids, max_length=10, on_error="skip")
    s = ds[0]
    assert s["source"] == "f.jsonl:4"
    assert [src for src, _ in s["skipped"]] == ["f.jsonl:3"] and "SampleTooLongError" in s["skipped"][0][1]
    assert ds[1]["skipped"] == []
    report = SkipReport()
    for source, reason in s["skipped"] + ds[0]["skipped"]:  # met again next epoch: counted once
        report.add(source, reason)
    assert report.total == 1 and "f.jsonl:3" in report.summary()


def test_missing_and_corrupt_images_name_the_item(tiny_model, tmp_path):
    model = tiny_model
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    p = write(tmp_path, [conv([{"type": "image", "path": "nope.png"}]), conv([{"type": "image", "path": "bad.png"}])])
    records = read_jsonl(p, PT)
    ds = ConversationDataset(records, model.tokenizer, model.modalities, model.placeholder_ids)
    with pytest.raises(MediaError, match=r"d.jsonl:1: message 0 part 0 \(image\).*not found"):
        ds[0]
    with pytest.raises(MediaError, match=r"d.jsonl:2: message 0 part 0 \(image\).*not a readable image"):
        ds[1]


def test_batch_is_ready_for_packing(tiny_model, vision_demo):
    from omnimodal.data.dataset import Collator

    model = tiny_model
    records = read_jsonl(vision_demo["train"], PT)[:3]
    ds = ConversationDataset(records, model.tokenizer, model.modalities, model.placeholder_ids)
    batch = Collator(model.modalities, model.tokenizer.pad_token_id)([ds[i] for i in range(3)])
    lengths = batch["attention_mask"].sum(1)
    for row in range(3):
        n = int(lengths[row])
        assert batch["position_ids"][row, :n].tolist() == list(range(n))
    assert batch["sources"][0].endswith(":1")


def test_events_from_preprocessing_reach_the_batch(tmp_path):
    """Clips cut to max duration are counted per sample, so data workers' counts are not lost."""
    import numpy as np
    import soundfile as sf

    from omnimodal.data.dataset import Collator
    from omnimodal.decoder import add_placeholders, train_bpe_tokenizer
    from omnimodal.model import build_modalities

    sf.write(tmp_path / "long.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(tmp_path / "short.wav", np.zeros(4000, dtype=np.float32), 16000)
    p = write(tmp_path, [conv([{"type": "audio", "path": "long.wav"}]), conv([{"type": "audio", "path": "short.wav"}])])
    mods = build_modalities({"audio": {"encoder": {"kind": "conv", "width": 16, "depth": 1, "heads": 2}, "projector": {"kind": "pool", "stride": 2}, "max_duration": 0.5}})
    tok = train_bpe_tokenizer(["red"], 300)
    ids = add_placeholders(tok, ["<audio>"])
    ds = ConversationDataset(read_jsonl(p, {"audio": "audio"}), tok, mods, ids)
    samples = [ds[0], ds[1]]
    assert samples[0]["events"] == {"audio.clips_cut": 1} and samples[1]["events"] == {}
    assert Collator(mods, tok.pad_token_id)(samples)["events"] == {"audio.clips_cut": 1}
