"""Inference: omnimodal.load, chat / batch / stream, the training prompt path, parts in every form, the CLI."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omnimodal.errors import DataError, MediaError, SampleTooLongError

from ._require import require, under_ci
from .conftest import PYTHON, texts_of, tiny_decoder_cfg, tiny_vision_cfg

EXTRA_TEXTS = ["What is this molecule?", "What do you hear?", "Describe it.", "hello"]


def extra_modalities() -> dict[str, dict]:
    """Tiny audio and molecule configs, for the plugins that work here."""
    from omnimodal.plugins import get_registry

    registry = get_registry()
    out = {}
    if "audio" in registry.modalities:
        out["audio"] = {
            "encoder": {"kind": "conv", "width": 32, "depth": 1, "heads": 2, "mlp_ratio": 2},
            "projector": {"kind": "pool", "stride": 2, "hidden_dim": None},
            "sample_rate": 16000, "max_duration": 30.0, "n_mels": 80, "train_encoder": True,
        }
    if "molecule" in registry.modalities:
        out["molecule"] = {
            "encoder": {"kind": "gine", "hidden_dim": 32, "num_layers": 2, "dropout": 0.0},
            "projector": {"kind": "resampler", "num_queries": 4},
            "max_atoms": 64, "on_too_many_atoms": "error", "train_encoder": True,
        }
    return out


def build_tiny_model(vision_demo, extras: bool = False):
    """A tiny random OmniModel (vision, plus audio/molecule when ``extras`` and available)."""
    from omnimodal.model import OmniModel

    torch.manual_seed(0)
    modalities = {"vision": tiny_vision_cfg(), **(extra_modalities() if extras else {})}
    cfg = {"decoder": tiny_decoder_cfg(), "modalities": modalities}
    return OmniModel.from_config(cfg, texts=texts_of([vision_demo["train"]]) + EXTRA_TEXTS)


def wav_bytes(seconds: float = 0.3, rate: int = 16000) -> bytes:
    """A sine tone as WAV bytes."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def run_dir(vision_demo, tmp_path_factory) -> Path:
    """A run dir holding ``model/`` (a tiny vision model)."""
    root = tmp_path_factory.mktemp("run")
    build_tiny_model(vision_demo).save_pretrained(root / "model")
    return root


@pytest.fixture(scope="module")
def pipe(run_dir):
    import omnimodal

    return omnimodal.load(run_dir, device="cpu")


@pytest.fixture(scope="module")
def image_path(vision_demo) -> Path:
    return sorted((vision_demo["train"].parent / "images").rglob("*.png"))[0]


def ask(image, text: str = "What colour is the circle?") -> list[dict]:
    return [{"role": "user", "content": [image, {"type": "text", "text": text}]}]


def test_load_is_lazy_and_accepts_run_and_model_dirs(run_dir):
    code = "import sys, omnimodal; assert 'torch' not in sys.modules; assert callable(omnimodal.load)"
    subprocess.run([PYTHON, "-c", code], check=True)
    import omnimodal
    from omnimodal.inference import Pipeline

    assert isinstance(omnimodal.load(run_dir / "model", device="cpu"), Pipeline)
    half = omnimodal.load(run_dir, device="cpu", dtype=torch.bfloat16)  # media features follow the model's dtype
    assert isinstance(half.chat([{"role": "user", "content": [{"type": "image", "image": np.zeros((8, 8, 3), np.uint8)}]}], max_new_tokens=3), str)


def test_chat_stream_and_batch_agree(pipe, image_path):
    msgs = ask({"type": "image", "path": str(image_path)})
    text = pipe.chat(msgs, max_new_tokens=12)
    assert isinstance(text, str) and text
    stream = pipe.stream(msgs, max_new_tokens=12)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == text
    assert stream.finish_reason in ("stop", "length") and 0 < stream.completion_tokens <= 12
    [done] = pipe.generate([msgs], max_new_tokens=12)
    assert done.text == text and done.prompt_tokens == pipe.prepare(msgs).num_tokens


def test_batched_generation_matches_one_by_one_with_one_encoder_pass(pipe, vision_demo):
    images = sorted((vision_demo["train"].parent / "images").rglob("*.png"))[:3]
    convs = [
        ask({"type": "image", "path": str(images[0])}),
        "hello",  # text only, a much shorter prompt: left padding must not change its answer
        [{"role": "system", "content": "Describe it."}, *ask({"type": "image", "path": str(images[1])}, "What shape?")],
        [{"role": "user", "content": [{"type": "image", "path": str(images[2])}, {"type": "image", "path": str(images[0])}, {"type": "text", "text": "Which came first?"}]}],
    ]
    calls = []
    hook = pipe.model.encoders["vision"].register_forward_hook(lambda mod, args, out: calls.append(1))
    try:
        batched = [c.text for c in pipe.generate(convs, max_new_tokens=8, batch_size=4)]
        assert len(calls) == 1
        single = [pipe.chat(c, max_new_tokens=8) for c in convs]
    finally:
        hook.remove()
    assert batched == single


def test_prompt_is_the_training_code_path(pipe, vision_demo):
    from omnimodal.data.dataset import ConversationDataset, prompt_messages
    from omnimodal.data.records import read_jsonl

    records = read_jsonl(vision_demo["test"], {"image": "vision"})[:3]
    ds = ConversationDataset(records, pipe.tokenizer, pipe.modalities, pipe.model.placeholder_ids, mode="generate")
    for i, record in enumerate(records):
        prompt = pipe.prepare(prompt_messages(record), base_dir=record.base_dir)
        expected = ds[i]
        assert prompt.sample["input_ids"] == expected["input_ids"]
        assert [it.num_tokens for it in prompt.sample["items"]] == [it.num_tokens for it in expected["items"]]


def test_every_image_form_gives_the_same_features(pipe, image_path):
    image = Image.open(image_path).convert("RGB")
    array = np.asarray(image)
    forms = [
        {"type": "image", "path": str(image_path)},
        {"type": "image", "path": image_path.name},  # relative to base_dir
        {"type": "image", "image": image_path},
        {"type": "image", "image": image},
        {"type": "image", "image": array},
        {"type": "image", "image": torch.from_numpy(array.copy())},
        {"type": "image", "image": image_path.read_bytes()},
    ]
    pixels = [pipe.prepare(ask(f), base_dir=image_path.parent).sample["items"][0].features["pixel_values"] for f in forms]
    for p in pixels[1:]:
        assert torch.allclose(p, pixels[0], atol=1e-6)


def test_sampling_is_seeded_and_leaves_global_rng_alone(pipe):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = pipe.chat("hello", temperature=1.0, top_p=0.9, seed=7, max_new_tokens=10)
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert pipe.chat("hello", temperature=1.0, top_p=0.9, seed=7, max_new_tokens=10) == a
    others = {pipe.chat("hello", temperature=1.5, seed=s, max_new_tokens=10) for s in range(4)}
    assert len(others) > 1


def test_stop_strings_cut_plain_and_streamed_answers(pipe):
    full = pipe.chat("hello", max_new_tokens=16, ignore_eos=True)
    stop = full[3:5]  # a string the greedy answer contains
    cut = full[: full.find(stop)]
    [done] = pipe.generate(["hello"], max_new_tokens=16, stop=[stop], ignore_eos=True)
    assert done.text == cut and done.finish_reason == "stop"
    stream = pipe.stream("hello", max_new_tokens=16, stop=[stop], ignore_eos=True)
    assert "".join(stream) == cut and stream.finish_reason == "stop"
    [done] = pipe.generate(["hello"], max_new_tokens=5, ignore_eos=True)
    assert done.finish_reason == "length" and done.completion_tokens == 5


def test_bad_input_names_the_message_and_part(pipe, image_path):
    with pytest.raises(DataError, match="message 0 part 1 has unknown type 'video'"):
        pipe.prepare([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "video", "path": "x"}]}])
    with pytest.raises(MediaError, match=r"message 0 part 0 \(image\).*not a readable image"):
        pipe.prepare(ask({"type": "image", "image": b"not a png"}))
    with pytest.raises(MediaError, match="not found"):
        pipe.prepare(ask({"type": "image", "path": "missing.png"}))
    with pytest.raises(DataError, match="role"):
        pipe.prepare([{"role": "robot", "content": "hi"}])
    with pytest.raises(SampleTooLongError, match="context"):
        pipe.chat(ask({"type": "image", "path": str(image_path)}), max_new_tokens=250)
    with pytest.raises(DataError, match="remote media URLs are refused"):
        pipe.prepare(ask({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}), api=True)
    with pytest.raises(DataError, match="unknown type 'image'"):  # no server-side paths over the API
        pipe.prepare(ask({"type": "image", "path": str(image_path)}), api=True)


def test_compose_a_pipeline_from_parts_without_hydra(vision_demo, image_path, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from omnimodal.decoder import train_bpe_tokenizer
    from omnimodal.inference import Pipeline
    from omnimodal.model import OmniModel, build_modalities
    from omnimodal.projectors import build_projector

    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer(texts_of([vision_demo["train"]]), vocab_size=300)
    modalities = build_modalities({"vision": tiny_vision_cfg()})
    encoders = {"vision": modalities["vision"].build_encoder()}
    decoder = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    projectors = {"vision": build_projector({"kind": "mlp"}, encoders["vision"].out_dim, decoder.config.hidden_size)}
    pipe = Pipeline(OmniModel(decoder, tokenizer, modalities, encoders, projectors), device="cpu")  # placeholders added: embeddings grow
    msgs = ask({"type": "image", "image": Image.open(image_path)})
    text = pipe.chat(msgs, max_new_tokens=6)
    pipe.model.save_pretrained(tmp_path / "composed")
    import omnimodal

    assert omnimodal.load(tmp_path / "composed", device="cpu").chat(msgs, max_new_tokens=6) == text


def test_audio_and_molecule_in_one_conversation(vision_demo, image_path):
    from omnimodal.inference import Pipeline

    model = build_tiny_model(vision_demo, extras=True)
    if set(model.modalities) != {"vision", "audio", "molecule"}:
        msg = f"audio/molecule plugins unavailable here (have {sorted(model.modalities)})"
        pytest.fail(msg) if under_ci() else pytest.skip(msg)
    require("soundfile", "audio")
    pipe = Pipeline(model, device="cpu")
    msgs = [{"role": "user", "content": [
        {"type": "image", "image": Image.open(image_path)},
        {"type": "audio", "audio": wav_bytes()},
        {"type": "molecule", "smiles": "CCO"},
        {"type": "text", "text": "Describe it."},
    ]}]
    prompt = pipe.prepare(msgs)
    assert [it.modality for it in prompt.sample["items"]] == ["vision", "audio", "molecule"]
    assert isinstance(pipe.chat(msgs, max_new_tokens=4), str)
    with pytest.raises(MediaError, match="molecule"):
        pipe.prepare([{"role": "user", "content": [{"type": "molecule", "smiles": "C1CC"}]}])


def test_cli_chat_and_generate(run_dir, image_path, vision_demo, tmp_path, capsys, monkeypatch):
    from omnimodal.cli import main

    assert main(["chat", "--model", str(run_dir), "--image", str(image_path), "--max-new-tokens", "4", "What colour?"]) == 0
    assert capsys.readouterr().out.strip()
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n\n/reset\nWhat shape?\n"))
    assert main(["chat", "--model", str(run_dir), "--image", str(image_path), "--max-new-tokens", "4"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["chat", "--model", str(run_dir), "--molecule", "CCO", "hi"]) == 2
    assert "no modality for --molecule" in capsys.readouterr().err

    out = tmp_path / "answers.jsonl"
    args = ["generate", "--model", str(run_dir), "--input", str(vision_demo["test"]), "--output", str(out),
            "--batch-size", "3", "--max-new-tokens", "4", "--quiet"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    inputs = [json.loads(line) for line in vision_demo["test"].read_text().splitlines() if line.strip()]
    assert len(rows) == len(inputs)
    assert all(isinstance(r["answer"], str) and r["finish_reason"] in ("stop", "length") for r in rows)
    assert [r["messages"] for r in rows] == [r["messages"] for r in inputs]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": [{"type": "image", "path": "nope.png"}]}]}) + "\n"
                   + json.dumps({"messages": [{"role": "user", "content": "hello"}]}) + "\n")
    assert main(["generate", "--model", str(run_dir), "--input", str(bad), "--output", str(out), "--quiet"]) == 2
    assert f"{bad}:1" in capsys.readouterr().err
    assert main(["generate", "--model", str(run_dir), "--input", str(bad), "--output", str(out), "--quiet", "--skip-errors"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "nope.png" in rows[0]["error"] and "answer" in rows[1]
