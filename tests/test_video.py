"""Video plugin: decoding by seeking, sampling, token counts, bad input, the encoder, sharing."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
import torch

from omnimodal.errors import ConfigError, MediaError

from ._require import require  # noqa: E402

av = require("av", "video")

from omnimodal_video import decode  # noqa: E402
from omnimodal_video.sampling import Sampling, sample_indices, uniform_indices  # noqa: E402

from .conftest import tiny_decoder_cfg, tiny_vision_cfg  # noqa: E402

T, H, W, FPS = 40, 32, 48, 10


def colour(k: int) -> tuple[int, int, int]:
    """Frame k's colour: far apart for neighbouring k, so a wrong frame is never within tolerance."""
    return ((k * 6) % 256, 255 - (k * 6) % 256, (k * 97) % 256)


def coloured_frames(n: int = T, h: int = H, w: int = W) -> np.ndarray:
    frames = np.empty((n, h, w, 3), np.uint8)
    for k in range(n):
        frames[k] = colour(k)
    return frames


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, object]:
    """Frame k has colour k: an H.264 MP4 (keyframe every 12 frames) and a VP9 WebM."""
    root = tmp_path_factory.mktemp("clips")
    frames = coloured_frames()
    return {
        "mp4": decode.write_video(frames, root / "k.mp4", fps=FPS, g="12", crf="0"),
        "webm": decode.write_video(frames, root / "k.webm", fps=FPS, codec="libvpx-vp9", crf="4"),
        "frames": frames,
        "root": root,
    }


def video_cfg(**over) -> dict:
    cfg = {
        "encoder": {"kind": "vit", "patch_size": 8, "width": 32, "depth": 1, "heads": 2, "features": "patch"},
        "projector": {"kind": "mlp", "hidden_dim": None},
        "image_size": 32,
        "num_frames": 4,
        "max_frames": 32,
        "spatial_pool": 2,
        "temporal_pool": 1,
    }
    cfg.update(over)
    return cfg


def video(**over):
    from omnimodal.model import build_modalities

    return build_modalities({"video": video_cfg(**over)})["video"]


def mean_colours(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(frames.shape[0], -1, 3).mean(1)


# ---- decoding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_decode_known_frames_by_seeking(clips, fmt):
    info = decode.probe(clips[fmt], "clip")
    assert (info.num_frames, info.fps, info.width, info.height) == (T, FPS, W, H)
    assert info.counted == (fmt == "webm")  # WebM has no frame count in its header: packets counted
    indices = [0, 5, 13, 14, 30, 39, 13]
    frames, decoded = decode.read_frames(clips[fmt], indices, "clip")
    assert frames.shape == (len(indices), H, W, 3) and decoded == 6
    want = np.array([colour(k) for k in indices], float)
    assert np.abs(mean_colours(frames) - want).max() < 6  # yuv420p is lossy, neighbours differ by >= 6
    # seeking gives exactly the frames a full decode gives
    assert np.array_equal(frames, decode.read_all_frames(clips[fmt])[indices])


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_modality_samples_the_planned_frames_from_path_and_bytes(clips, fmt):
    mod = video(num_frames=8)
    plan = mod.plan(clips[fmt], "clip")
    assert plan["indices"] == [2, 7, 12, 17, 22, 27, 32, 37]  # centres of 8 equal segments of 40
    for raw in (clips[fmt], clips[fmt].read_bytes()):
        loaded = mod.load(raw, "clip")
        assert loaded["indices"] == plan["indices"]
        want = np.array([colour(k) for k in plan["indices"]], float)
        assert np.abs(mean_colours(loaded["frames"]) - want).max() < 6
        item = mod.prepare(raw, "clip")
        assert item.features["pixel_values"].shape == (8, 3, 32, 32)
        assert item.num_tokens == plan["num_tokens"] == 8 * 4  # 4x4 patches pooled 2x2 per frame


def test_array_input_needs_fps_and_samples_like_a_file(clips):
    mod = video(num_frames=8)
    frames = clips["frames"]
    loaded = mod.load({"array": frames, "fps": FPS}, "arr")
    assert np.array_equal(loaded["frames"], frames[[2, 7, 12, 17, 22, 27, 32, 37]])
    assert mod.load((torch.from_numpy(frames), FPS), "arr")["indices"] == loaded["indices"]
    with pytest.raises(MediaError, match="arr: a video array needs its frame rate"):
        mod.load(frames, "arr")
    with pytest.raises(MediaError, match="arr: video fps must be a positive number"):
        mod.load({"array": frames, "fps": 0}, "arr")


# ---- sampling ---------------------------------------------------------------------------------
def test_sampling_is_a_pure_function_of_count_fps_and_config():
    assert uniform_indices(16, 8) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert uniform_indices(16, 1) == [8]  # one frame: the middle one
    assert uniform_indices(3, 5) == [0, 0, 1, 2, 2]  # more frames than the clip: repeats, count kept
    one_fps = Sampling(num_frames=None, fps=1.0, max_frames=None)
    assert sample_indices(300, 30.0, one_fps) == [15 + 30 * i for i in range(10)]  # 10 s at 1 fps
    capped = Sampling(num_frames=None, fps=1.0, max_frames=4)
    assert sample_indices(300, 30.0, capped) == uniform_indices(300, 4)
    assert sample_indices(300, 30.0, capped) == sample_indices(300, 30.0, capped)
    every = Sampling(num_frames=None, fps=None, max_frames=None)
    assert sample_indices(7, 30.0, every) == list(range(7))
    with pytest.raises(ConfigError, match="video.fps must be a positive number"):
        Sampling.from_config({"fps": -1})
    with pytest.raises(ConfigError, match="video.num_frames must be a positive integer"):
        Sampling.from_config({"num_frames": 0})


def test_token_count_follows_duration_and_budget_from_metadata_alone(clips, monkeypatch):
    def no_pixels(*a, **k):
        raise AssertionError("plan() must not decode pixels")

    monkeypatch.setattr(decode.Clip, "read", no_pixels)
    per_frame = 4
    mod = video(num_frames=None, fps=2.0, max_frames=None)
    for seconds in (1, 2.5, 4):
        n = int(seconds * FPS)
        plan = mod.plan({"array": clips["frames"][:n], "fps": FPS}, "arr")
        assert plan["num_tokens"] == round(seconds * 2) * per_frame
    assert mod.plan(clips["mp4"], "clip")["num_tokens"] == 8 * per_frame  # 4 s at 2 fps
    assert mod.plan(clips["webm"], "clip")["num_tokens"] == 8 * per_frame
    budget = video(num_frames=None, fps=2.0, max_frames=None, max_tokens=22)
    plan = budget.plan(clips["mp4"], "clip")
    assert plan["num_tokens"] == 20 and len(plan["indices"]) == 5  # the most frames within 22 tokens
    pooled = video(num_frames=None, fps=2.0, max_frames=None, max_tokens=22, temporal_pool=2)
    plan = pooled.plan(clips["mp4"], "clip")
    assert len(plan["indices"]) == 8 and plan["num_tokens"] == 16  # 8 frames -> 4 groups x 4
    with pytest.raises(ConfigError, match="max_tokens=3 is below the 4 pseudo-tokens of a single frame"):
        video(max_tokens=3).plan(clips["mp4"], "clip")


def test_missing_frames_repeat_the_last_one_so_the_token_count_holds(clips, tmp_path):
    """Header (moov first) promises 40 frames, but the file is cut: the tail repeats the last decoded frame."""
    path = tmp_path / "fast.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"g": "12", "crf": "0", "bf": "0"}
        for frame in clips["frames"]:
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = path.read_bytes()
    cut = data[: int(len(data) * 0.5)]
    mod = video(num_frames=8)
    assert mod.plan(cut, "cut")["info"].num_frames == T  # the header still says 40
    item = mod.prepare(cut, "cut")
    assert item.num_tokens == 8 * 4 and item.features["num_frames"] == 8
    repeated = mod.counters.get("frames_repeated", 0)
    assert 0 < repeated < 8
    frames = mean_colours(mod.load(cut, "cut")["frames"])
    real = 8 - repeated
    want = np.array([colour(k) for k in mod.plan(cut, "cut")["indices"][:real]], float)
    assert np.abs(frames[:real] - want).max() < 6
    assert np.array_equal(frames[real:], np.repeat(frames[real - 1 : real], repeated, axis=0))


# ---- bad input --------------------------------------------------------------------------------
def _wav_bytes() -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, np.float32), 16000, format="WAV")
    return buf.getvalue()


def _webm_headers(path) -> bytes:
    """A WebM cut just inside its first cluster: headers declaring a video stream, and no frame."""
    data = path.read_bytes()
    return data[: data.index(bytes.fromhex("1f43b675")) + 12]


def _png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda c: b"this is not a video at all", "not a readable video"),
        (lambda c: _png_bytes(), "still image"),
        (lambda c: {"array": np.zeros((0, 8, 8, 3), np.uint8), "fps": 8}, "zero frames"),
        (lambda c: b"\x00" * 64 + c["mp4"].read_bytes()[64:], "not a readable video"),  # corrupt header
        (lambda c: c["mp4"].read_bytes()[: c["mp4"].stat().st_size // 2], "not a readable video"),  # truncated
        (lambda c: _webm_headers(c["webm"]), "the video has zero frames"),  # a video stream, no frame
        (lambda c: _wav_bytes(), "no video stream"),
        (lambda c: c["root"] / "missing.mp4", "video file not found"),
    ],
    ids=["not-video", "image", "zero-frames", "corrupt", "truncated", "zero-frames-file", "audio-only", "missing"],
)
def test_bad_videos_name_the_item(clips, make, reason):
    with pytest.raises(MediaError, match=f"clip-7: .*{reason}"):
        video().prepare(make(clips), "clip-7")


def test_odd_frame_size_is_a_clear_error(tmp_path):
    with pytest.raises(MediaError, match="clip-3: frame size 33x32 is odd; H.264 .* needs even width and height"):
        decode.write_video(np.zeros((4, 32, 33, 3), np.uint8), tmp_path / "odd.mp4", source="clip-3")


def test_torchcodec_is_used_only_when_it_loads():
    ok, why = decode.torchcodec_status()
    if ok:
        video(backend="torchcodec")
    else:
        assert why
        with pytest.raises(ConfigError, match="torchcodec cannot load here"):
            video(backend="torchcodec")
    with pytest.raises(ConfigError, match="video.backend must be one of"):
        video(backend="opencv")


def test_video_url_parts(clips):
    mod = video()
    data = clips["mp4"].read_bytes()
    url = "data:video/mp4;base64," + base64.b64encode(data).decode()
    assert mod.item_from_api_part({"type": "video_url", "video_url": {"url": url}}) == data
    remote = mod.item_from_api_part({"type": "video_url", "video_url": {"url": "https://x/a.mp4"}})
    assert remote == "https://x/a.mp4"  # left to the server, which refuses it unless allowed
    with pytest.raises(MediaError, match="invalid base64"):
        mod.item_from_api_part({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,@@@"}})


# ---- the encoder ------------------------------------------------------------------------------
def test_encoder_length_matches_the_encoder_and_chunking_changes_nothing(clips):
    torch.manual_seed(0)
    mod = video(num_frames=5, temporal_pool=2)
    three = video(num_frames=3, temporal_pool=2)
    items = [mod.prepare(clips["mp4"], "a"), three.prepare({"array": clips["frames"][:3], "fps": 3}, "b")]
    assert items[0].length == 3 * 4  # 5 frames -> 3 temporal groups, 2x2 pooled patches each
    assert items[1].length == 2 * 4  # 3 frames -> 2 groups
    encoder = mod.build_encoder().eval()
    batch = mod.collate([it.features for it in items])
    feats, mask = encoder(**batch)
    assert feats.shape[:2] == mask.shape == (2, 12)
    assert mask.sum(1).tolist() == [it.length for it in items]
    calls = []
    tower_forward = encoder.tower.forward
    encoder.tower.forward = lambda x: calls.append(x.shape[0]) or tower_forward(x)
    encoder.max_frames_per_call = 3
    feats_3, _ = encoder(**batch)
    assert calls == [3, 3, 2]  # 5 + 3 real frames (the padded one never reaches the tower)
    assert torch.allclose(feats, feats_3, atol=1e-5)
    # a clip padded with masked frames in the batch encodes exactly as alone
    alone, _ = encoder(**mod.collate([items[1].features]))
    assert torch.allclose(alone[0], feats[1, : items[1].length], atol=1e-5)


def test_hf_tower_from_local_dir(tmp_path, clips):
    import transformers

    cfg = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    transformers.SiglipVisionModel(cfg).save_pretrained(tmp_path / "siglip")
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "siglip")
    mod = video(encoder={"kind": "hf", "path": str(tmp_path / "siglip"), "feature_layer": -1, "features": "patch"})
    encoder = mod.build_encoder()
    item = mod.prepare(clips["mp4"], "clip")
    feats, mask = encoder(**mod.collate([item.features]))
    assert feats.shape == (1, item.length, 32) and item.length == 4 * 4


# ---- in a model -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_records(tmp_path_factory, clips):
    from PIL import Image

    root = tmp_path_factory.mktemp("mixed")
    Image.new("RGB", (40, 40), (200, 30, 30)).save(root / "red.png")
    (root / "clip.mp4").write_bytes(clips["mp4"].read_bytes())
    rows = [
        {"messages": [
            {"role": "user", "content": [
                {"type": "image", "path": "red.png"}, {"type": "video", "path": "clip.mp4"},
                {"type": "text", "text": "Is the picture in the clip?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "no"}]}]},
        {"messages": [
            {"role": "user", "content": [{"type": "video", "path": "clip.mp4"}, {"type": "text", "text": "What moves?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "colours"}]}]},
    ]
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _model(mixed_records, **video_over):
    from omnimodal.data.records import read_jsonl
    from omnimodal.model import OmniModel

    torch.manual_seed(0)
    cfg = {"decoder": tiny_decoder_cfg(), "modalities": {"vision": tiny_vision_cfg(), "video": video_cfg(**video_over)}}
    records = read_jsonl(mixed_records, {"image": "vision", "video": "video"})
    texts = [t for r in records for t in texts_of_record(r)]
    return OmniModel.from_config(cfg, texts=texts * 4), records


def texts_of_record(record) -> list[str]:
    from omnimodal.data.dataset import answer_text, question_text

    return [question_text(record), answer_text(record)]


def _batch(model, records):
    from omnimodal.data.dataset import Collator, ConversationDataset

    ds = ConversationDataset(records, model.tokenizer, model.modalities, model.placeholder_ids)
    return Collator(model.modalities, model.tokenizer.pad_token_id)([ds[0], ds[1]])


def test_training_step_with_an_image_and_a_video_in_one_conversation(mixed_records):
    model, records = _model(mixed_records)
    batch = _batch(model, records)
    assert batch["media_tokens"] == {"vision": [16], "video": [16, 16]}
    assert batch["media"]["video"]["pixel_values"].shape == (2, 4, 3, 32, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(**batch).loss
    loss.backward()
    for name in ("encoders.vision", "encoders.video", "projectors.video"):
        grads = [p.grad for p in model.get_submodule(name).parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name
    opt.step()
    assert model(**batch).loss < loss


def test_shared_tower_and_projector_saved_once_under_the_owner(mixed_records, tmp_path):
    from safetensors import safe_open

    from omnimodal.model import OmniModel
    from omnimodal.training.module import apply_stage, parameter_groups

    model, records = _model(mixed_records, shared_with="vision", image_size=64, encoder={"kind": "vit", "patch_size": 4})
    assert model.encoders["video"].tower is model.encoders["vision"]
    assert model.projectors["video"] is model.projectors["vision"]
    assert model.modalities["video"].frames is model.modalities["vision"]  # frames preprocessed as images
    assert not [n for n, _ in model.named_parameters() if n.startswith(("encoders.video", "projectors.video"))]
    batch = _batch(model, records)
    assert batch["media"]["video"]["pixel_values"].shape[-1] == 64  # vision's image_size, not video's
    assert batch["media_tokens"]["video"] == [4 * 4, 4 * 4]  # vision's 4x4 grid, pooled to 2x2, 4 frames

    # freezing and learning rate follow the owner
    apply_stage(model, {"lr": 1e-3, "encoder_lr": 1e-4}, {"vision": {"train_encoder": False}, "video": {"train_encoder": True, "shared_with": "vision"}})
    assert not any(p.requires_grad for p in model.encoders["video"].parameters())
    assert not model.encoders["video"].tower.training
    apply_stage(model, {"lr": 1e-3, "encoder_lr": 1e-4}, {"vision": {}, "video": {"shared_with": "vision"}})
    names = {g["name"]: g["lr"] for g in parameter_groups(model, 0.01, {"lr": 1e-3, "encoder_lr": 1e-4})}
    assert names["encoders.vision"] == 1e-4 and not any("video" in n for n in names)

    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
    out = model.save_pretrained(tmp_path / "saved")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("encoders.vision.") for k in keys)
    assert not any(k.startswith(("encoders.video.", "projectors.video.")) for k in keys)
    config = json.loads((out / "omnimodal.json").read_text())
    assert config["shared_with"] == {"video": "vision"}
    assert config["modalities"]["video"]["config"]["shared_with"] == "vision"

    loaded = OmniModel.from_pretrained(out)
    assert loaded.encoders["video"].tower is loaded.encoders["vision"]
    with torch.no_grad():
        after = loaded(**_batch(loaded, records)).logits
    assert torch.allclose(before, after, atol=1e-5)


def test_shared_with_must_name_an_active_modality():
    from omnimodal.model import build_modalities

    with pytest.raises(ConfigError, match="modalities.video.shared_with='vision': it must name another active modality"):
        build_modalities({"video": video_cfg(shared_with="vision")})


def test_chat_with_a_video_part(mixed_records, tmp_path, clips, capsys):
    from omnimodal.cli import main

    model, _ = _model(mixed_records)
    model.save_pretrained(tmp_path / "m")
    assert main(["chat", "--model", str(tmp_path / "m"), "--part", f"video={clips['mp4']}", "--max-new-tokens", "2", "What moves?"]) == 0
    assert capsys.readouterr().out.strip() != ""

    import omnimodal
    from omnimodal.inference import RemoteMediaError

    pipe = omnimodal.load(tmp_path / "m")
    url = "data:video/mp4;base64," + base64.b64encode(clips["mp4"].read_bytes()).decode()
    prompt = pipe.prepare([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What moves?"}]}], api=True)
    assert [it.modality for it in prompt.sample["items"]] == ["video"] and prompt.sample["items"][0].num_tokens == 16
    with pytest.raises(RemoteMediaError, match="remote media URLs are refused"):
        pipe.prepare([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "https://example.com/a.mp4"}}]}], api=True)


# ---- the demo ---------------------------------------------------------------------------------
def test_demo_clips_are_deterministic_and_need_several_frames(tmp_path):
    from omnimodal_video import demo

    sizes = {"train": 6, "val": 1, "test": 1}
    a = demo.build(tmp_path / "a", seed=0, sizes=sizes)
    b = demo.build(tmp_path / "b", seed=0, sizes=sizes)
    assert a["train"].read_text() == b["train"].read_text()
    clip_a, clip_b = sorted((tmp_path / "a" / "clips" / "train").iterdir()), sorted((tmp_path / "b" / "clips" / "train").iterdir())
    assert [p.read_bytes() for p in clip_a] == [p.read_bytes() for p in clip_b]
    rows = [json.loads(line) for line in a["train"].read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"direction", "first_colour", "flashes"} and len(rows) == 18
    info = decode.probe(clip_a[0])
    assert (info.num_frames, info.width, info.height) == (demo.FRAMES, demo.SIZE, demo.SIZE)
    # the default sampling (8 frames) takes one frame of every 2-frame block: every event is seen
    assert uniform_indices(demo.FRAMES, 8) == list(range(1, demo.FRAMES, demo.BLOCK))
    assert math.gcd(demo.FRAMES, 8) == 8


def test_hydra_composes_video_beside_vision_with_sharing():
    import subprocess

    import yaml

    from omnimodal.model import build_modalities

    from .conftest import PYTHON, cli_env

    out = subprocess.run(
        [PYTHON, "-m", "omnimodal.train", "modalities=[vision,video]", "modalities.video.shared_with=vision", "modalities.video.fps=1", "modalities.video.num_frames=null", "--cfg", "job"],
        capture_output=True, text=True, timeout=300, env=cli_env(),
    )
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["modalities"]["video"]["encoder"]["kind"] == "vit" and cfg["modalities"]["video"]["max_frames"] == 32
    mods = build_modalities(cfg["modalities"])
    assert mods["video"].frames is mods["vision"] and mods["video"].sampling.fps == 1.0
    assert mods["video"].cfg["projector"] == mods["vision"].cfg["projector"]
