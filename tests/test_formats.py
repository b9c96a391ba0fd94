"""Data formats: omnimodal JSONL, LLaVA JSON (array or JSONL), messages + media columns,
Hugging Face datasets on disk and Parquet -- detected, validated lazily with file:line (or
file[index]) errors, and giving the same token ids and labels as our own JSONL."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from omnimodal.data.formats import ReadContext, open_split
from omnimodal.data.formats.jsonl import JsonArray
from omnimodal.data.records import SkipReport
from omnimodal.errors import DataError

from .conftest import tiny_decoder_cfg, tiny_vision_cfg

CTX = ReadContext({"image": "vision"}, {"image": "<image>"})


@pytest.fixture(autouse=True)
def _offline_datasets(tmp_path, monkeypatch):
    """Everything offline, with a private datasets cache (Parquet is converted into it)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    datasets.disable_progress_bars()


# ---- writers: one conversation list -> each format ------------------------------------
# A conversation is [(role, [("text", str) | ("image", relative path)])] plus an optional kind.


def from_demo(path: Path) -> list[dict]:
    """The demo's omnimodal JSONL as plain conversations."""
    out = []
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        turns = [(m["role"], [("image", p["path"]) if p["type"] == "image" else ("text", p["text"]) for p in m["content"]]) for m in obj["messages"]]
        out.append({"turns": turns, "kind": obj.get("kind")})
    return out


def _images(conv):
    return [v for _, parts in conv["turns"] for t, v in parts if t == "image"]


def _with_kind(obj, conv):
    if conv.get("kind"):
        obj["kind"] = conv["kind"]
    return obj


def omnimodal_rows(convs):
    return [_with_kind({"messages": [{"role": r, "content": [{"type": "image", "path": v} if t == "image" else {"type": "text", "text": v} for t, v in parts]} for r, parts in c["turns"]]}, c) for c in convs]


def llava_rows(convs, image_value=lambda p: p):
    frm = {"user": "human", "assistant": "gpt", "system": "system"}
    rows = []
    for i, c in enumerate(convs):
        row = {"id": f"r{i}", "conversations": [{"from": frm[r], "value": "\n".join("<image>" if t == "image" else v for t, v in parts)} for r, parts in c["turns"]]}
        images = [image_value(p) for p in _images(c)]
        if len(images) == 1:
            row["image"] = images[0]
        elif images:
            row["image"] = images
        rows.append(_with_kind(row, c))
    return rows


def messages_rows(convs, image_value=lambda p: p):
    return [
        _with_kind({
            "messages": [{"role": r, "content": [{"type": "image"} if t == "image" else {"type": "text", "text": v} for t, v in parts]} for r, parts in c["turns"]],
            "images": [image_value(p) for p in _images(c)],
        }, c)
        for c in convs
    ]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_hf(path: Path, convs, root: Path) -> Path:
    """messages + an ``images`` column of PIL images (stored by datasets as PNG bytes)."""
    import datasets
    from PIL import Image

    rows = messages_rows(convs, lambda p: Image.open(root / p).copy())
    features = datasets.Features({
        "messages": [{"role": datasets.Value("string"), "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}],
        "images": datasets.List(datasets.Image()),
        "kind": datasets.Value("string"),
    })
    for r in rows:
        r.setdefault("kind", None)
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(path))
    return path


def write_parquet(path: Path, convs, root: Path) -> Path:
    """LLaVA layout with the images as raw bytes in a list column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = llava_rows(convs, lambda p: (root / p).read_bytes())
    for r in rows:
        img = r.get("image")
        r["image"] = [] if img is None else img if isinstance(img, list) else [img]
        r.setdefault("kind", None)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)
    return path


def write_format(fmt: str, convs, root: Path, out: Path) -> Path:
    """``convs`` (image paths relative to ``root``) written in ``fmt`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "images").exists() and (root / "images").exists() and out != root:
        (out / "images").symlink_to(root / "images")
    if fmt == "omnimodal":
        return write_jsonl(out / "data.jsonl", omnimodal_rows(convs))
    if fmt == "llava":
        p = out / "data.json"
        p.write_text(json.dumps(llava_rows(convs), indent=2, ensure_ascii=False))
        return p
    if fmt == "llava-jsonl":
        return write_jsonl(out / "data.jsonl", llava_rows(convs))
    if fmt == "messages":
        return write_jsonl(out / "data.jsonl", messages_rows(convs))
    if fmt == "hf":
        return write_hf(out / "dataset", convs, root)
    if fmt == "parquet":
        return write_parquet(out / "data.parquet", convs, root)
    raise AssertionError(fmt)


FORMATS = ["omnimodal", "llava", "llava-jsonl", "messages", "hf", "parquet"]
DETECTED = {"omnimodal": ("omnimodal", "JSON Lines"), "llava": ("llava", "JSON array"), "llava-jsonl": ("llava", "JSON Lines"),
            "messages": ("messages", "JSON Lines"), "hf": ("messages", "Hugging Face dataset"), "parquet": ("llava", "Parquet")}


@pytest.fixture
def mixed(vision_demo) -> tuple[list[dict], Path]:
    """One image, two images in one turn, text only (with a system turn), an image in turn 3."""
    root = vision_demo["train"].parent
    a, b = "images/train/00000.png", "images/train/00001.png"
    convs = [
        {"turns": [("user", [("image", a), ("text", "What colour are the shapes?")]), ("assistant", [("text", "red")])], "kind": "colour"},
        {"turns": [("user", [("text", "Which is bigger?"), ("image", a), ("image", b)]), ("assistant", [("text", "the first")])]},
        {"turns": [("system", [("text", "Be brief.")]), ("user", [("text", "Say hello")]), ("assistant", [("text", "hello")])]},
        {"turns": [("user", [("text", "Hi")]), ("assistant", [("text", "hi")]), ("user", [("image", b), ("text", "And this?")]), ("assistant", [("text", "blue")])]},
    ]
    return convs, root


def _tiny_model(vision_demo):
    from omnimodal.model import OmniModel

    from .conftest import texts_of

    torch.manual_seed(0)
    cfg = {"decoder": tiny_decoder_cfg(), "modalities": {"vision": tiny_vision_cfg()}}
    texts = texts_of([vision_demo["train"]]) + ["Which is bigger?", "the first", "Be brief.", "Say hello", "hello", "Hi", "hi", "And this?", "blue"]
    return OmniModel.from_config(cfg, texts=texts)


def _samples(model, path, fmt="auto", **data):
    from omnimodal.training.datamodule import OmniDataModule

    dm = OmniDataModule({"format": fmt, **data}, {"train": [path]}, model.tokenizer, model.modalities, model.placeholder_ids)
    ds = dm.dataset("train")
    return [ds[i] for i in range(len(ds))]


def _same_samples(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["input_ids"] == w["input_ids"], (g["source"], w["source"])
        assert g["labels"] == w["labels"], (g["source"], w["source"])
        assert g["kind"] == w["kind"]
        assert len(g["items"]) == len(w["items"])
        for gi, wi in zip(g["items"], w["items"]):
            assert torch.equal(gi.features["pixel_values"], wi.features["pixel_values"])


# ---- detection and equivalence -----------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_is_detected_logged_and_reads_the_same_conversations(fmt, mixed, tmp_path, caplog):
    convs, root = mixed
    path = write_format(fmt, convs, root, tmp_path / fmt)
    with caplog.at_level(logging.INFO, logger="omnimodal.data.formats"):
        records = open_split([path], {}, CTX)
    layout, container = DETECTED[fmt]
    assert f"{layout} ({container}), 4 records" in caplog.text
    reference = open_split([write_format("omnimodal", convs, root, tmp_path / "ref")], {}, CTX)
    from omnimodal.data.chat import render_messages

    for i in range(4):
        got, want = records[i], reference[i]
        assert render_messages(got.messages, CTX.placeholders) == render_messages(want.messages, CTX.placeholders)
        assert [p["type"] for p in got.media_parts()] == [p["type"] for p in want.media_parts()]
        assert got.kind == want.kind
    src = records.where(1)
    assert src.startswith(str(path)) and (src.endswith("[1]") if fmt in ("hf", "parquet") else ":" in src)


@pytest.mark.slow
def test_demo_vision_set_gives_the_same_token_ids_and_labels_in_every_format(vision_demo, tmp_path):
    """The demo's vision set converted to each format: same ids, labels and pixels as its JSONL."""
    model = _tiny_model(vision_demo)
    convs = from_demo(vision_demo["train"])[:16]
    root = vision_demo["train"].parent
    want = _samples(model, write_format("omnimodal", convs, root, tmp_path / "omnimodal"))
    for fmt in FORMATS[1:]:
        _same_samples(_samples(model, write_format(fmt, convs, root, tmp_path / fmt)), want)


def test_forced_format_and_image_folder(mixed, tmp_path):
    convs, root = mixed
    rows = llava_rows(convs)
    p = tmp_path / "elsewhere" / "data.jsonl"
    p.parent.mkdir()
    write_jsonl(p, rows)
    records = open_split([p], {"format": "llava", "image_folder": str(root)}, ReadContext({"image": "vision"}, {"image": "<image>"}, root))
    assert records[0].base_dir == root and (root / records[0].media_parts()[0]["path"]).is_file()
    with pytest.raises(DataError, match="data.format=hf but .*data.jsonl is a JSON file"):
        open_split([p], {"format": "hf"}, CTX)
    # forcing omnimodal on LLaVA rows: the first row names what is wrong
    records = open_split([p], {"format": "omnimodal"}, CTX)
    with pytest.raises(DataError, match=r"data.jsonl:1: a record must be an object with 'messages'"):
        records[0]


def test_undetectable_file_says_how_to_force_a_format(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"x.jsonl: cannot tell the format.*data.format"):
        open_split([p], {}, CTX)


# ---- bad records -------------------------------------------------------------------------

BAD = [
    ("llava", {"image": ["a.png", "b.png"], "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
     r"2 image value\(s\) under 'image' but the text's <image> placeholders do not match"),
    ("llava", {"conversations": [{"from": "human", "value": "<image> q"}, {"from": "gpt", "value": "a"}]}, r"turn 0 has one <image> too many"),
    ("llava", {"conversations": [{"from": "robot", "value": "q"}]}, r"turn 0 has 'from' 'robot'"),
    ("llava", {"conversations": [{"from": "human", "value": "q"}]}, "no assistant turn"),
    ("messages", {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}, {"role": "assistant", "content": "a"}], "images": ["a.png"]},
     r"more image parts than values in 'images' \(1\)"),
    ("messages", {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}, {"role": "assistant", "content": "a"}], "images": ["a.png"]},
     r"1 value\(s\) in 'images' but 0 image part\(s\)"),
    ("omnimodal", {"messages": [{"role": "user", "content": [{"type": "video", "path": "a.mp4"}]}, {"role": "assistant", "content": "a"}]}, "unknown type 'video'"),
]


def _good(fmt):
    conv = [{"turns": [("user", [("text", "q")]), ("assistant", [("text", "a")])]}]
    return (llava_rows if fmt == "llava" else messages_rows if fmt == "messages" else omnimodal_rows)(conv)[0]


@pytest.mark.parametrize("fmt, row, reason", BAD)
def test_bad_record_names_file_line_and_reason(fmt, row, reason, tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [_good(fmt), _good(fmt), row])
    records = open_split([p], {"format": fmt}, CTX)
    assert records[0].source.endswith("d.jsonl:1")
    with pytest.raises(DataError, match=rf"d.jsonl:3: .*{reason}"):
        records[2]
    # skip mode: streamed past (the loader counts it); evaluation views count it here
    assert len(list(open_split([p], {"format": fmt, "on_error": "skip"}, CTX))) == 2
    report = SkipReport()
    assert len(records.valid(report)) == 2 and report.total == 1 and "d.jsonl:3" in report.summary()


def test_bad_rows_of_hf_and_parquet_name_the_dataset_index(tiny_model, mixed, tmp_path):
    from omnimodal.data.dataset import ConversationDataset
    from omnimodal.errors import SpliceError

    convs, root = mixed
    bad = {"turns": [("user", [("text", "<image> but no image")]), ("assistant", [("text", "a")])]}
    hf = open_split([write_format("hf", [*convs, bad], root, tmp_path / "hf")], {}, CTX)
    ds = ConversationDataset(hf, tiny_model.tokenizer, tiny_model.modalities, tiny_model.placeholder_ids)
    assert len(ds[1]["items"]) == 2
    # messages layout: only typed parts are media, so a typed "<image>" is text, and does not fit
    with pytest.raises(SpliceError, match=r"dataset\[4\]: placeholder tokens"):
        ds[4]
    pq = open_split([write_format("parquet", [*convs, bad], root, tmp_path / "pq")], {}, CTX)
    with pytest.raises(DataError, match=r"data.parquet\[4\]: .*turn 0 has one <image> too many"):
        pq[4]


def test_json_array_scanner_indexes_lines_and_bytes_across_chunks(tmp_path, monkeypatch):
    """Offsets stay right for non-ASCII text and elements cut by chunk boundaries."""
    monkeypatch.setattr(JsonArray, "chunk", 16)
    rows = [{"conversations": [{"from": "human", "value": f"quelle forme ? é{i} ✓"}, {"from": "gpt", "value": "carré " * (i % 5)}]} for i in range(30)]
    p = tmp_path / "a.json"
    p.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    index = JsonArray(p)
    assert len(index) == 30
    assert [index.row(i) for i in range(30)] == rows
    text = p.read_text(encoding="utf-8").splitlines()
    assert all(text[int(index.lines[i]) - 1].strip() == "{" for i in range(30))
    (tmp_path / "e.json").write_text("[]")
    assert len(JsonArray(tmp_path / "e.json")) == 0
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + p.read_bytes())  # as some Windows tools save it
    assert JsonArray(tmp_path / "bom.json").row(29) == rows[29]


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ('[\n{"conversations": []},\n{"conversations": [}\n]', 3, "invalid JSON in the array"),
        ('[\n{"conversations": []}\n{"conversations": []}]', 3, "expected ',' or ']'"),
        ('[\n{"conversations": []},\n', 3, ".*not closed"),
        ('{"a": 1}', 1, None),  # not an array: read as JSON Lines
    ],
)
def test_broken_json_array_names_the_line(tmp_path, text, line, reason):
    p = tmp_path / "b.json"
    p.write_text(text)
    if reason is None:
        assert len(open_split([p], {"format": "omnimodal"}, CTX)) == 1
        return
    with pytest.raises(DataError, match=rf"b.json:{line}: {reason}"):
        open_split([p], {"format": "llava"}, CTX)


def test_messages_null_keys_are_ignored_and_placeholder_text_is_text(tmp_path):
    row = {"messages": [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "q", "image": None}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "a", "image": None}]}], "images": [{"bytes": None, "path": "x.png"}]}
    rec = open_split([write_jsonl(tmp_path / "m.jsonl", [row])], {}, CTX)[0]
    assert rec.messages[0]["content"] == [{"type": "image", "path": "x.png"}, {"type": "text", "text": "q"}]


# ---- train a step from each format ------------------------------------------------------


def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from omnimodal.builtin import core_config_dir
    from omnimodal.train import register_search_path_plugin

    register_search_path_plugin()
    with initialize_config_dir(config_dir=str(core_config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_train_one_step_from_each_format_skipping_a_bad_record(fmt, mixed, tmp_path, caplog):
    from omnimodal.train import train

    from .test_training import TINY

    convs, root = mixed
    bad = {"turns": [("user", [("image", "images/train/missing.png"), ("text", "q")]), ("assistant", [("text", "a")])]}
    path = write_format(fmt, [*convs, bad], root, tmp_path / fmt) if fmt not in ("hf", "parquet") else None
    if path is None:  # Arrow formats hold bytes: make the bad record a placeholder mismatch instead
        bad = {"turns": [("user", [("text", "<image> q")]), ("assistant", [("text", "a")])]}
        path = write_format(fmt, [*convs, bad], root, tmp_path / fmt)
    # llava through a data worker: the skip is counted in the main process all the same
    workers = ["data.num_workers=1"] if fmt == "llava" else []
    cfg = _compose([*TINY, "modalities=[vision]", f"data.train={path}", "data.on_error=skip", "trainer.max_steps=1",
                    "evaluate=false", "save_model=false", "+trainer.enable_model_summary=false", *workers])
    with caplog.at_level(logging.WARNING):
        result = train(cfg, tmp_path / "run")
    assert result["global_step"] == 1
    assert "skipped 1 record(s)" in caplog.text and f"{path.name}" in caplog.text


def test_media_of_an_installed_but_inactive_modality_is_an_error_not_dropped(tmp_path):
    ctx = ReadContext.for_part_types({"audio": "audio"})
    llava = write_jsonl(tmp_path / "l.jsonl", [{"image": "a.png", "conversations": [{"from": "human", "value": "<image> q"}, {"from": "gpt", "value": "a"}]}])
    with pytest.raises(DataError, match=r"l.jsonl:1: the record has 'image' media but modality 'vision' is not active"):
        open_split([llava], {"format": "llava"}, ctx)[0]
    msgs = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "images": ["a.png"]}])
    with pytest.raises(DataError, match=r"m.jsonl:1: the record has 'images' media but modality 'vision' is not active"):
        open_split([msgs], {"format": "messages"}, ctx)[0]


def test_llava_other_modalities_use_their_key_and_placeholder_in_text_order(tmp_path):
    ctx = ReadContext({"image": "vision", "audio": "audio", "molecule": "molecule"},
                      {"image": "<image>", "audio": "<audio>", "molecule": "<molecule>"})
    row = {"image": "a.png", "audio": ["x.wav", "y.wav"], "molecule": {"smiles": "CCO"},
           "conversations": [{"from": "human", "value": "Hear <audio> then <audio>, see <image> and <molecule>?"},
                             {"from": "gpt", "value": "yes"}]}
    rec = open_split([write_jsonl(tmp_path / "l.jsonl", [row])], {}, ctx)[0]
    parts = rec.messages[0]["content"]
    assert [p["type"] for p in parts] == ["text", "audio", "text", "audio", "text", "image", "text", "molecule", "text"]
    assert [p.get("path") for p in parts if p["type"] == "audio"] == ["x.wav", "y.wav"]
    assert parts[7] == {"type": "molecule", "smiles": "CCO"}
    from omnimodal.data.chat import render_messages

    assert render_messages(rec.messages, ctx.placeholders)[0]["content"] == row["conversations"][0]["value"]  # verbatim


def test_streamed_tokenizer_training_matches_the_sorted_set(vision_demo):
    """The scratch tokenizer learns from an iterator (each text once) and comes out the same."""
    from omnimodal.data.dataset import training_texts
    from omnimodal.decoder import train_bpe_tokenizer

    records = open_split([vision_demo["train"]], {}, CTX)
    texts = list(training_texts(records)) + ["an extra text", "an extra text"]
    streamed = train_bpe_tokenizer(iter(texts), 300)
    reference = train_bpe_tokenizer(sorted(set(texts)), 300)
    assert streamed.backend_tokenizer.to_str() == reference.backend_tokenizer.to_str()


def test_skip_mode_test_split_is_a_view_without_bad_records(tiny_model, vision_demo, tmp_path):
    from omnimodal.training.datamodule import OmniDataModule

    lines = vision_demo["test"].read_text().splitlines()
    p = write_jsonl(tmp_path / "test.jsonl", [lines[0], "{broken", lines[1]])
    (tmp_path / "images").symlink_to(vision_demo["test"].parent / "images")
    dm = OmniDataModule({"on_error": "skip"}, {"train": [vision_demo["train"]], "test": [p]}, tiny_model.tokenizer, tiny_model.modalities, tiny_model.placeholder_ids)
    test = dm.load_records()["test"]
    assert [r.source for r in test] == [f"{p}:1", f"{p}:3"]
    assert dm.report.total == 1 and f"{p}:2" in dm.report.summary()


def test_resume_signature_hashes_a_dataset_directory(tmp_path):
    """A saved dataset or a Parquet folder is a directory: its files' names and contents are hashed."""
    from omnimodal.training.signature import data_signature, file_hash

    d = tmp_path / "dataset"
    (d / "sub").mkdir(parents=True)
    (d / "a.arrow").write_bytes(b"one")
    (d / "sub" / "b.json").write_bytes(b"two")
    before = file_hash(d)
    assert before == file_hash(d) and data_signature({"train": [d]})["data.train"]
    (d / "sub" / "b.json").write_bytes(b"three")
    assert file_hash(d) != before
