"""The demo's data: the held-out sets never change, and ``multi_turn=True`` training
conversations (one per medium) hold exactly the questions of the default one-question records."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from omnimodal.demo import conversation_record

from ._require import require

#: sha256 of the default-size held-out files (seed 0). Accuracies are only comparable across
#: versions while these stay the same: a change here must make the sets harder, never easier.
HELD_OUT = {
    ("vision", "test"): "0fd442d7c11c09e9407a4af60ac683c8bda5c4ccb23dd95156773a4c19f12f76",
    ("vision", "val"): "21efab347114f3c072c24dc9350db9b6199f1c37d03f25a09c61acaf9e7cb99c",
    ("audio", "test"): "2a04ba1f47329f9ed8161845c854de06544145f779a2f6c976ea2be3aee08562",
    ("audio", "val"): "2455880e025f65e169880da4a9f5ff0e97c058159f5d0723ba647c9753aa95f3",
    ("molecule", "test"): "1b355fe46736d75ee658358c9eb23300fb801355db50f8b8b2c4118af926df8c",
    ("molecule", "val"): "e47a43f377c7d0ecd36a91eeade28f4f94af3cb20e88f789220a0ec839b93a1e",
}


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def turns(recs: list[dict], media_type: str) -> list[tuple[str, str, str]]:
    """``(medium, question, answer)`` per question asked, checking each record's shape: the
    medium opens the first user turn only, user and assistant turns alternate, and no
    conversation asks one question twice."""
    out = []
    for r in recs:
        messages = r["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        medium = messages[0]["content"][0]
        assert medium["type"] == media_type
        asked = []
        for i in range(0, len(messages), 2):
            *media, question = messages[i]["content"]
            assert media == ([medium] if i == 0 else []) and question["type"] == "text"
            asked.append(question["text"])
            out.append((json.dumps(medium, sort_keys=True), question["text"], messages[i + 1]["content"][0]["text"]))
        assert len(set(asked)) == len(asked)
    return out


def test_conversation_record_opens_with_the_medium_and_labels_every_answer():
    part = {"type": "image", "path": "a.png"}
    rec = conversation_record(part, [("Colour?", "red"), ("Shape?", "circle")])
    assert rec == {"messages": [
        {"role": "user", "content": [part, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "text", "text": "Shape?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "circle"}]},
    ]}
    assert conversation_record(part, [("Colour?", "red")], kind="colour")["kind"] == "colour"
    with pytest.raises(ValueError, match="no turns"):
        conversation_record(part, [])


def _build(name: str):
    if name == "audio":
        require("soundfile", "audio")
        from omnimodal_audio.demo import build
    elif name == "molecule":
        require("rdkit", "molecule")
        from omnimodal_molecule.demo import build
    else:
        from omnimodal_vision.demo import build
    return build


@pytest.mark.parametrize("name, media_type", [("vision", "image"), ("audio", "audio")])
def test_training_conversations_hold_the_single_question_records(tmp_path, name, media_type):
    build = _build(name)
    sizes = {"train": 12, "val": 3, "test": 4}
    multi = build(tmp_path / "multi", 0, sizes, multi_turn=True)
    single = build(tmp_path / "single", 0, sizes)
    for split in ("val", "test"):  # held-out records ask one question each, whatever the mode
        assert multi[split].read_bytes() == single[split].read_bytes()
        assert all(len(r["messages"]) == 2 and r["kind"] for r in records(multi[split]))
    media = sorted(p.relative_to(tmp_path / "multi") for p in (tmp_path / "multi").rglob("*") if p.is_file() and p.suffix != ".jsonl")
    for rel in media:  # the same images / clips either way
        assert (tmp_path / "multi" / rel).read_bytes() == (tmp_path / "single" / rel).read_bytes()
    conversations = records(multi["train"])
    assert len(conversations) == sizes["train"]  # one per image / clip
    assert all(len(r["messages"]) >= 6 and "kind" not in r for r in conversations)  # 3+ questions each
    assert Counter(turns(conversations, media_type)) == Counter(turns(records(single["train"]), media_type))


@pytest.mark.parametrize("name", ["vision", "audio", "molecule"])
def test_default_held_out_sets_are_unchanged(tmp_path, name):
    """The default demo's validation and test files, byte for byte."""
    build = _build(name)
    # Default val/test sizes, one training item (each split has its own random stream).
    sizes = {"train": 1} if name == "molecule" else {"train": 1, "val": 100, "test": 250}
    paths = build(tmp_path, 0, sizes)
    for split in ("val", "test"):
        got = hashlib.sha256(paths[split].read_bytes()).hexdigest()
        assert got == HELD_OUT[(name, split)], f"{name} demo {split}.jsonl changed"
