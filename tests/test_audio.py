"""The audio plugin: loading, resampling, features, token counts, encoders, demo data, errors."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ._require import require

require("torchaudio", "audio")
sf = require("soundfile", "audio")

from omnimodal.errors import ConfigError, DataError, MediaError  # noqa: E402
from omnimodal.plugins import get_registry  # noqa: E402
from omnimodal.projectors import build_projector  # noqa: E402
from omnimodal.specs import import_object  # noqa: E402

TINY_CONV = {"kind": "conv", "width": 32, "depth": 1, "heads": 2, "mlp_ratio": 2}


def make_audio(cfg: dict | None = None):
    """A registry-backed AudioModality with a tiny conv encoder and a pool projector."""
    cfg = {"encoder": dict(TINY_CONV), "projector": {"kind": "pool", "stride": 2}, **(cfg or {})}
    spec = get_registry().modality("audio")
    return import_object(spec.impl)(spec, cfg)


def tone(freq: float = 440.0, seconds: float = 0.5, rate: int = 16000, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


# ---- registration ----------------------------------------------------------------------


def test_spec_and_hooks():
    reg = get_registry()
    spec = reg.modality("audio")
    assert (spec.part_type, spec.placeholder, spec.api_part_types) == ("audio", "<audio>", ("input_audio",))
    assert spec.impl == "omnimodal_audio.modality:AudioModality"
    assert spec.requires == ("torchaudio", "soundfile")
    assert reg.modality_owner["audio"] == "audio"
    assert reg.demos["audio"].builder == "omnimodal_audio.demo:build"
    conf = [Path(d) for d in reg.plugin("audio").config_dirs]
    assert len(conf) == 1
    text = (conf[0] / "modalities" / "audio.yaml").read_text()
    assert text.startswith("# @package modalities.audio")
    assert "/audio/encoder@encoder: conv" in text and "/projector@projector: pool" in text
    assert (conf[0] / "audio" / "encoder" / "conv.yaml").is_file()
    assert (conf[0] / "audio" / "encoder" / "whisper.yaml").is_file()


def test_default_config_builds(tmp_path):
    from omegaconf import OmegaConf

    conf = Path(get_registry().plugin("audio").config_dirs[0])
    own = OmegaConf.to_container(OmegaConf.load(conf / "modalities" / "audio.yaml"))
    encoder = OmegaConf.to_container(OmegaConf.load(conf / "audio" / "encoder" / "conv.yaml"))
    cfg = {k: v for k, v in own.items() if k != "defaults"}
    cfg["encoder"] = encoder
    cfg["projector"] = {"kind": "pool", **cfg["projector"]}
    spec = get_registry().modality("audio")
    mod = import_object(spec.impl)(spec, cfg)
    enc = mod.build_encoder()
    assert enc.out_dim == 128
    item = mod.prepare({"array": tone(seconds=2.0), "sample_rate": 16000}, "two seconds")
    assert item.features["input_features"].shape == (80, 200)
    assert (item.length, item.num_tokens) == (50, 25)


def test_bad_config():
    with pytest.raises(ConfigError, match="unknown"):
        make_audio({"encoder": {"kind": "wav2vec"}})
    with pytest.raises(ConfigError, match="max_duration"):
        make_audio({"max_duration": -1})
    with pytest.raises(ConfigError, match="bad option"):
        make_audio({"encoder": {**TINY_CONV, "widht": 4}}).build_encoder()


# ---- loading ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,subtype,exact", [("WAV", "FLOAT", True), ("FLAC", "PCM_24", True), ("OGG", "VORBIS", False)]
)
def test_load_formats_from_path_and_bytes(tmp_path, fmt, subtype, exact):
    mod = make_audio()
    wave = tone(440.0, 0.5)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, wave, 16000, format=fmt, subtype=subtype)
    for raw in (path, str(path), path.read_bytes()):
        out = mod.load(raw, "clip")
        assert out.dtype == torch.float32 and out.ndim == 1
        if exact:
            np.testing.assert_allclose(out.numpy(), wave, atol=1e-5)
        else:  # vorbis is lossy: same length (within a frame), same pitch
            assert abs(out.shape[0] - wave.shape[0]) < 1024
            assert abs(peak_hz(out.numpy(), 16000) - 440.0) < 5


def test_resample_keeps_pitch(tmp_path):
    mod = make_audio()
    path = tmp_path / "cd.wav"
    sf.write(path, tone(440.0, 1.0, rate=44100), 44100)
    out = mod.load(path, "cd.wav").numpy()
    assert out.shape[0] == 16000
    assert abs(peak_hz(out, 16000) - 440.0) < 2
    # a raw array given at its own rate is resampled too
    out = mod.load({"array": tone(1000.0, 1.0, rate=8000), "sample_rate": 8000}, "8k").numpy()
    assert out.shape[0] == 16000 and abs(peak_hz(out, 16000) - 1000.0) < 2


def test_mono_mixdown(tmp_path):
    mod = make_audio()
    left, right = tone(440.0, 0.25), tone(880.0, 0.25, amp=0.25)
    stereo = np.stack([left, right])  # [channels, samples]
    for raw in ({"array": stereo, "sample_rate": 16000}, (torch.from_numpy(stereo), 16000)):
        np.testing.assert_allclose(mod.load(raw, "stereo").numpy(), (left + right) / 2, atol=1e-6)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo.T, 16000, subtype="FLOAT")  # files are [samples, channels]
    np.testing.assert_allclose(mod.load(path, "stereo.wav").numpy(), (left + right) / 2, atol=1e-6)
    # integer PCM arrays are scaled to [-1, 1]
    pcm = (left * 32767).astype(np.int16)
    np.testing.assert_allclose(mod.load((pcm, 16000), "pcm").numpy(), left, atol=1e-4)


def test_duration_cut_is_counted_and_logged(caplog):
    mod = make_audio({"max_duration": 0.5})
    with caplog.at_level(logging.WARNING):
        short = mod.load({"array": tone(seconds=0.4), "sample_rate": 16000}, "short clip")
        long = mod.load({"array": tone(seconds=1.5, rate=44100), "sample_rate": 44100}, "long clip")
    assert short.shape[0] == 6400 and long.shape[0] == 8000
    assert mod.counters == {"clips_cut": 1}
    assert "long clip" in caplog.text and "cut to 0.50s" in caplog.text and "short clip" not in caplog.text


def test_api_and_data_parts(tmp_path):
    mod = make_audio()
    buf = io.BytesIO()
    sf.write(buf, tone(seconds=0.3), 16000, format="WAV")
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"}}
    raw = mod.item_from_api_part(part)
    assert isinstance(raw, bytes) and mod.load(raw, "api").shape[0] == 4800
    with pytest.raises(MediaError, match="base64"):
        mod.item_from_api_part({"type": "input_audio", "input_audio": {"data": "not base64!", "format": "wav"}})
    with pytest.raises(MediaError, match="format"):
        mod.item_from_api_part({"type": "input_audio", "input_audio": {"data": "", "format": "aiff"}})
    with pytest.raises(DataError):
        mod.item_from_api_part({"type": "image_url", "image_url": {"url": "data:"}})
    assert mod.item_from_part({"type": "audio", "path": "a.wav"}, tmp_path) == tmp_path / "a.wav"
    item = mod.item_from_part({"type": "audio", "array": [0.0, 0.1, -0.1], "sample_rate": 16000}, tmp_path)
    assert mod.load(item, "inline").shape[0] == 3
    with pytest.raises(MediaError, match="sample rate"):
        mod.load(mod.item_from_part({"type": "audio", "array": [0.0, 0.1]}, tmp_path), "inline without rate")


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"RIFF this is not audio at all", "not a readable audio"),
        (b"", "empty"),
        ({"array": np.zeros(0, np.float32), "sample_rate": 16000}, "empty"),
        ({"array": np.zeros((0, 100), np.float32), "sample_rate": 16000}, "empty"),
        ({"array": np.array([0.0, np.nan, 0.1]), "sample_rate": 16000}, "NaN or infinite"),
        ((np.array([0.0, np.inf]), 16000), "NaN or infinite"),
        (np.zeros(100, np.float32), "needs its sample rate"),
        ({"array": np.zeros(100), "sample_rate": None}, "needs its sample rate"),
        ({"array": np.zeros(100), "sample_rate": -8000}, "positive integer"),
        ({"array": np.zeros((1000, 2)), "sample_rate": 16000}, r"transpose it to \[channels, samples\]"),
        ({"array": np.zeros((2, 3, 4)), "sample_rate": 16000}, r"\[channels, samples\]"),
        ({"array": ["a", "b"], "sample_rate": 16000}, "must hold numbers"),
        (Path("/nonexistent/clip.wav"), "not found"),
        (3.5, "cannot load audio"),
    ],
)
def test_bad_input_names_the_item(raw, reason):
    mod = make_audio()
    with pytest.raises(MediaError, match=reason) as info:
        mod.prepare(raw, "train.jsonl:7 audio #1")
    assert "train.jsonl:7 audio #1" in str(info.value)


def test_bad_file_on_disk(tmp_path):
    path = tmp_path / "fake.wav"
    path.write_text("hello")
    with pytest.raises(MediaError, match="fake.wav: not a readable audio file"):
        make_audio().load(path, "fake.wav")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(MediaError, match="empty.wav: the audio clip is empty"):
        make_audio().load(empty, "empty.wav")


# ---- features, token counts, masks -----------------------------------------------------


def test_log_mel_features():
    mod = make_audio()
    feats = mod.preprocess(torch.from_numpy(tone(1000.0, 1.0)), "x")["input_features"]
    assert feats.shape == (80, 100) and feats.dtype == torch.float32
    # log10 clamped 8 below the peak, then (x + 4) / 4: a span of at most 2
    assert float(feats.max() - feats.min()) <= 2.0 + 1e-5
    # the tone's energy sits in one band, constant over time
    band = feats.mean(1).argmax()
    assert (feats.argmax(0) == band).float().mean() > 0.9
    # a quiet copy is lower by log10(100) / 4 = 0.5 at its peak (level is kept, not normalised)
    quiet = mod.preprocess(torch.from_numpy(tone(1000.0, 1.0) * 0.1), "x")["input_features"]
    assert abs(float(feats.max() - quiet.max()) - 0.5) < 0.01
    # even a clip shorter than one hop gives one frame
    assert mod.preprocess(torch.zeros(50), "tiny")["input_features"].shape == (80, 1)


@pytest.mark.parametrize("seconds", [0.05, 0.33, 1.0, 2.57])
def test_token_count_follows_duration(seconds):
    mod = make_audio()
    item = mod.prepare({"array": tone(seconds=seconds), "sample_rate": 16000}, "clip")
    frames = int(seconds * 16000) // 160
    assert item.features["input_features"].shape[-1] == frames
    assert item.length == math.ceil(frames / 4)
    assert item.num_tokens == math.ceil(item.length / 2)


def test_counts_match_encoder_and_projector_in_a_padded_batch():
    torch.manual_seed(0)
    mod = make_audio()
    items = [
        mod.prepare({"array": tone(300 + 200 * i, s), "sample_rate": 16000}, f"clip {i}")
        for i, s in enumerate([0.9, 0.21, 0.5, 0.07])
    ]
    batch = mod.collate([it.features for it in items])
    assert batch["input_features"].shape == (4, 80, 90)
    assert batch["lengths"].tolist() == [90, 21, 50, 7]
    enc = mod.build_encoder().eval()
    proj = build_projector(mod.cfg["projector"], enc.out_dim, 24)
    with torch.no_grad():
        feats, mask = enc(**batch)
        tokens, tmask = proj(feats, mask)
    assert feats.shape == (4, max(it.length for it in items), enc.out_dim)
    assert mask.sum(1).tolist() == [it.length for it in items]
    assert tmask.sum(1).tolist() == [it.num_tokens for it in items]
    for i, it in enumerate(items):
        # mask is a prefix: real frames first, padding after, and padding is zeroed
        assert mask[i, : it.length].all() and not mask[i, it.length :].any()
        assert feats[i, it.length :].abs().sum() == 0
        # padding never changes an item's encoding: alone == in the batch
        with torch.no_grad():
            alone, _ = enc(**mod.collate([it.features]))
            alone_tokens, _ = proj(alone, torch.ones(alone.shape[:2], dtype=torch.bool))
        torch.testing.assert_close(feats[i, : it.length], alone[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(tokens[i, : it.num_tokens], alone_tokens[0], atol=1e-5, rtol=1e-4)


def test_learned_positions_and_gradients():
    mod = make_audio({"encoder": {**TINY_CONV, "positions": "learned", "max_positions": 8}})
    enc = mod.build_encoder()
    short = mod.prepare({"array": tone(seconds=0.3), "sample_rate": 16000}, "short")
    feats, mask = enc(**mod.collate([short.features]))
    feats[mask].sum().backward()
    assert enc.pos_embed.grad is not None and enc.convs[0].weight.grad is not None
    long = mod.prepare({"array": tone(seconds=0.5), "sample_rate": 16000}, "long")  # 13 positions > 8
    with pytest.raises(ValueError, match="max_positions"):
        enc(**mod.collate([long.features]))


# ---- Whisper (offline, tiny) -----------------------------------------------------------


def save_tiny_whisper(path: Path) -> Path:
    """A tiny random Whisper (d_model 32, 2 layers, 2 s window) and its extractor, saved to ``path``."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    config = WhisperConfig(
        vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=100, max_target_positions=16, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    WhisperModel(config).save_pretrained(path)
    # a 2 s window: 200 mel frames = max_source_positions * 2
    WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=2).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


def make_whisper(path: Path, **extra):
    return make_audio({"encoder": {"kind": "whisper", "path": str(path), "feature_layer": -1}, **extra})


def test_whisper_encoder_offline(tiny_whisper, tmp_path):
    mod = make_whisper(tiny_whisper)
    enc = mod.build_encoder().eval()
    assert enc.out_dim == 32 and enc.window == 200
    assert "hf_config" not in mod.cfg["encoder"] and mod.whisper_config()["max_source_positions"] == 100
    clips = [tone(440.0, 0.75), tone(880.0, 1.23, amp=0.1)]
    items = [mod.prepare({"array": c, "sample_rate": 16000}, f"w{i}") for i, c in enumerate(clips)]
    assert [it.features["num_frames"] for it in items] == [75, 123]
    assert [it.length for it in items] == [38, 62]
    assert [it.num_tokens for it in items] == [19, 31]
    batch = mod.collate([it.features for it in items])
    with torch.no_grad():
        feats, mask = enc(**batch)
    assert feats.shape == (2, 62, 32) and mask.sum(1).tolist() == [38, 62]
    # identical to Whisper's own path: the extractor pads to the window, the encoder runs, we slice
    fe = mod.processor
    with torch.no_grad():
        for i, clip in enumerate(clips):
            full = fe(clip, sampling_rate=16000, return_tensors="pt")["input_features"]
            ref = enc.model(full).last_hidden_state[0, : items[i].length]
            torch.testing.assert_close(feats[i, : items[i].length], ref, atol=1e-4, rtol=1e-4)
    # a clip longer than the window (2 s) is cut to it and counted
    long = mod.prepare({"array": tone(seconds=3.0), "sample_rate": 16000}, "long")
    assert long.features["input_features"].shape[-1] == 200 and long.length == 100
    assert long.features["num_frames"] == 200
    assert mod.counters["clips_cut"] == 1
    # other layers of hidden_states
    mod0 = make_whisper(tiny_whisper)
    mod0.cfg["encoder"]["feature_layer"] = 0
    with torch.no_grad():
        emb, _ = mod0.build_encoder().eval()(**batch)
    assert emb.shape == feats.shape and not torch.allclose(emb, feats)


def test_whisper_rebuilds_from_saved_config(tiny_whisper, tmp_path):
    mod = make_whisper(tiny_whisper)
    enc = mod.build_encoder().eval()
    mod.save_assets(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    # a saved model: its config, assets (whisper_config.json, extractor) beside it, original path gone
    cfg = dict(mod.cfg)
    cfg["encoder"] = {**cfg["encoder"], "path": str(tmp_path / "gone")}
    spec = get_registry().modality("audio")
    again = import_object(spec.impl)(spec, cfg)
    again.load_assets(tmp_path)
    rebuilt = again.build_encoder(load_weights=False).eval()
    rebuilt.load_state_dict(enc.state_dict())
    item = again.prepare({"array": tone(seconds=0.5), "sample_rate": 16000}, "clip")
    batch = again.collate([item.features])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(**batch)[0], enc(**batch)[0])


def test_whisper_bad_path(tmp_path):
    with pytest.raises(ConfigError, match="feature extractor"):
        make_whisper(tmp_path).build_encoder()


# ---- demo ------------------------------------------------------------------------------


def test_demo_builder_is_deterministic(tmp_path):
    from omnimodal_audio.demo import QUESTIONS, build

    sizes = {"train": 12, "val": 2, "test": 3}
    a, b, c = (build(tmp_path / name, seed, sizes) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert sorted(a) == ["test", "train", "val"]
    for split in a:
        assert a[split].read_text() == b[split].read_text()
    clips_a = sorted((tmp_path / "a" / "clips").rglob("*.wav"))
    assert len(clips_a) == 17
    for clip in clips_a:
        assert clip.read_bytes() == (tmp_path / "b" / clip.relative_to(tmp_path / "a")).read_bytes()
    assert a["train"].read_text() != c["train"].read_text()

    records = [json.loads(line) for line in a["train"].read_text().splitlines()]
    assert len(records) == 36  # three questions per clip
    mod = make_audio()
    kinds: dict[str, list[str]] = {}
    for rec in records:
        user, assistant = rec["messages"]
        media, question = user["content"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert media["type"] == "audio" and media["path"].startswith("clips/train/")
        assert question == {"type": "text", "text": QUESTIONS[rec["kind"]]}
        kinds.setdefault(rec["kind"], []).append(assistant["content"][0]["text"])
        info = sf.info(str(tmp_path / "a" / media["path"]))
        assert info.samplerate == 16000 and info.channels == 1 and info.duration <= 2.0
    assert sorted(kinds["count"]) == sorted(["one", "two", "three"] * 4)  # 12 clips: exactly balanced
    assert sorted(kinds["loudness"]) == ["loud"] * 6 + ["quiet"] * 6
    styles = kinds["pitch"] + kinds["contour"]
    assert sorted(styles) == ["falling"] * 3 + ["high"] * 3 + ["low"] * 3 + ["rising"] * 3
    mod.prepare(tmp_path / "a" / records[0]["messages"][0]["content"][0]["path"], "demo clip")
