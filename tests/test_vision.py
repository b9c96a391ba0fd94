"""Vision plugin: loading from every source, resizing, HF towers loaded offline from a local dir."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from omnimodal.errors import ConfigError, MediaError
from omnimodal.plugins import get_registry
from omnimodal.specs import import_object

from .conftest import tiny_vision_cfg


def vision(cfg=None):
    spec = get_registry().modality("vision")
    return import_object(spec.impl)(spec, cfg or tiny_vision_cfg())


def test_load_from_path_bytes_pil_and_array(tmp_path):
    mod = vision()
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.save(tmp_path / "a.png")
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[..., 0] = 255
    for raw in (tmp_path / "a.png", str(tmp_path / "a.png"), buf.getvalue(), img, arr, arr.astype(np.float32) / 255):
        item = mod.prepare(raw, "t")
        px = item.features["pixel_values"]
        assert px.shape == (3, 64, 64)
        assert px[0].mean() > 0.9 and px[1].mean() < -0.9  # red, normalised to [-1, 1]
        assert item.num_tokens == 16


def test_pad_to_square_uses_the_mean_colour():
    mod = vision({**tiny_vision_cfg(), "resize": "pad"})
    img = Image.new("RGB", (64, 32), (200, 100, 0))
    px = mod.prepare(img, "t").features["pixel_values"]
    # Padding has the image's mean colour, so the whole square is that colour.
    assert torch.allclose(px[:, 0, 0], px[:, 32, 32], atol=0.02)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty image bytes"),
        (b"GIF89a-garbage", "not a readable image"),
        (np.zeros((4, 4)), r"HxWx3 \(RGB\)"),
        (np.full((4, 4, 3), np.nan), "NaN"),
        (12, "cannot load an image from int"),
    ],
)
def test_bad_images_name_the_item(raw, reason):
    with pytest.raises(MediaError, match=rf"item-7: .*{reason}|item-7: {reason}"):
        vision().prepare(raw, "item-7")


def _save_tower(tmp_path, kind):
    import transformers

    if kind == "clip":
        cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8)
        model = transformers.CLIPVisionModel(cfg)
        proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        cfg = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8)
        model = transformers.SiglipVisionModel(cfg)
        proc = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    path = tmp_path / kind
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path, model


@pytest.mark.parametrize("kind, features, expected_len", [("clip", "patch", 16), ("clip", "cls_patch", 17), ("siglip", "patch", 16)])
def test_hf_tower_loads_from_local_dir_with_feature_layer(tmp_path, kind, features, expected_len):
    path, reference = _save_tower(tmp_path, kind)
    cfg = {**tiny_vision_cfg(), "encoder": {"kind": "hf", "path": str(path), "feature_layer": -2, "features": features}}
    mod = vision(cfg)
    encoder = mod.build_encoder().eval()
    item = mod.prepare(Image.new("RGB", (50, 40), (0, 128, 255)), "t")
    assert item.length == expected_len and item.num_tokens == expected_len
    assert mod.estimate_tokens({"path": "not-read.png"}) == expected_len  # length grouping: from the config alone
    feats, mask = encoder(**mod.collate([item.features]))
    assert feats.shape == (1, expected_len, 32) and mask.all()
    with torch.no_grad():
        hidden = reference.eval()(pixel_values=item.features["pixel_values"][None], output_hidden_states=True).hidden_states[-2]
    start = 1 if (kind == "clip" and features == "patch") else 0
    assert torch.allclose(feats, hidden[:, start:], atol=1e-5)


def test_saved_model_with_hf_tower_reloads_without_the_original_path(tmp_path, vision_demo):
    import shutil

    from omnimodal.model import OmniModel

    from .conftest import texts_of, tiny_decoder_cfg

    path, _ = _save_tower(tmp_path, "clip")
    cfg = {"decoder": tiny_decoder_cfg(), "modalities": {"vision": {**tiny_vision_cfg(), "encoder": {"kind": "hf", "path": str(path), "feature_layer": -1, "features": "patch"}}}}
    model = OmniModel.from_config(cfg, texts=texts_of([vision_demo["train"]])).eval()
    model.save_pretrained(tmp_path / "saved")
    shutil.rmtree(path)  # the original tower is gone: the saved dir must be enough
    loaded = OmniModel.from_pretrained(tmp_path / "saved")
    img = Image.new("RGB", (32, 32), (10, 200, 30))
    a = model.modalities["vision"].prepare(img, "t").features["pixel_values"]
    b = loaded.modalities["vision"].prepare(img, "t").features["pixel_values"]
    assert torch.equal(a, b)  # same processor
    fa, _ = model.encode_media("vision", {"pixel_values": a[None]})
    fb, _ = loaded.encode_media("vision", {"pixel_values": b[None]})
    assert torch.allclose(fa, fb)


def test_bad_tower_path_is_a_config_error(tmp_path):
    cfg = {**tiny_vision_cfg(), "encoder": {"kind": "hf", "path": str(tmp_path / "missing")}}
    with pytest.raises(ConfigError, match="cannot read a model config"):
        vision(cfg).build_encoder()


def test_siglip2_tower_offline_at_variable_resolution(tmp_path):
    """SigLIP2 (NaFlex): each image keeps its aspect ratio, so its token count varies; the
    features equal the tower's own forward on the processor's padded batch, and a saved model
    rebuilds without the original path."""
    import shutil

    import transformers

    cfg = transformers.Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8, num_patches=64)
    reference = transformers.Siglip2VisionModel(cfg).eval()
    proc_cls = getattr(transformers, "Siglip2ImageProcessorPil", None) or transformers.Siglip2ImageProcessor
    proc = proc_cls(patch_size=8, max_num_patches=32)
    path = tmp_path / "siglip2"
    reference.save_pretrained(path)
    proc.save_pretrained(path)
    mod = vision({**tiny_vision_cfg(), "encoder": {"kind": "hf", "path": str(path), "feature_layer": -1, "features": "patch"}})
    images = [Image.new("RGB", (64, 64), (200, 10, 10)), Image.new("RGB", (120, 30), (10, 200, 10)), Image.new("RGB", (20, 90), (0, 0, 255))]
    items = [mod.prepare(im, f"img{i}") for i, im in enumerate(images)]
    full = proc(images=images, return_tensors="pt")
    expected = full["spatial_shapes"].prod(-1).tolist()
    assert [it.length for it in items] == [it.num_tokens for it in items] == expected
    assert len(set(expected)) > 1  # variable resolution really varies
    assert mod.estimate_tokens({"path": "not-read.png"}) is None  # depends on the image: not estimated
    encoder = mod.build_encoder().eval()
    assert "hf_config" not in mod.cfg["encoder"]
    with torch.no_grad():
        feats, mask = encoder(**mod.collate([it.features for it in items]))
        ref = reference(**full, output_hidden_states=True).hidden_states[-1]
    assert mask.sum(1).tolist() == expected
    for i, n in enumerate(expected):
        torch.testing.assert_close(feats[i, :n], ref[i, :n], atol=1e-5, rtol=1e-4)
    # save -> load without the original directory
    from omnimodal.model import OmniModel

    from .conftest import tiny_decoder_cfg

    model = OmniModel.from_config({"decoder": tiny_decoder_cfg(), "modalities": {"vision": mod.cfg}}, texts=["a", "what is it?"])
    model.save_pretrained(tmp_path / "saved")
    shutil.rmtree(path)
    loaded = OmniModel.from_pretrained(tmp_path / "saved")
    again = loaded.modalities["vision"].prepare(images[1], "img1")
    assert again.length == expected[1]
    with torch.no_grad():
        a, _ = model.encode_media("vision", mod.collate([items[1].features]))
        b, _ = loaded.encode_media("vision", loaded.modalities["vision"].collate([again.features]))
    torch.testing.assert_close(a, b)


# ---- the fast pixel path for fixed-resolution towers ---------------------------------------------
def _processors():
    import transformers

    return {
        "clip": transformers.CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 40, "width": 48}),
        "clip-default": transformers.CLIPImageProcessor(),
        "siglip": transformers.SiglipImageProcessor(size={"height": 40, "width": 56}),
    }


def _images():
    rng = np.random.default_rng(3)
    noise = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((64, 64), (33, 91), (250, 17), (640, 480))]
    return [*noise, Image.new("RGB", (10, 10), (255, 255, 255)), Image.new("RGB", (300, 120), (0, 0, 0))]


@pytest.mark.parametrize("name", ["clip", "clip-default", "siglip"])
def test_fast_pixels_equal_the_processor_bit_for_bit(name):
    """The data worker's fast path gives exactly the tower processor's pixel values (resize,
    crop, rescale, normalise), on square, tall, wide, tiny and large images."""
    from omnimodal_vision.pixels import fast_pixels

    proc = _processors()[name]
    fast = fast_pixels(proc)
    assert fast is not None
    for image in _images():
        want = proc(images=image, return_tensors="pt")["pixel_values"][0]
        got = fast(image)
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert torch.equal(got, want), (name, image.size)


def test_vision_modality_takes_the_fast_path_for_a_clip_tower(tmp_path):
    path, _ = _save_tower(tmp_path, "clip")
    mod = vision({**tiny_vision_cfg(), "encoder": {"kind": "hf", "path": str(path), "feature_layer": -1, "features": "patch"}})
    image = _images()[1]
    px = mod.prepare(image, "t").features["pixel_values"]
    assert mod.fast_pixels is not None
    assert torch.equal(px, mod.processor(images=image, return_tensors="pt")["pixel_values"][0])


def test_fast_pixels_refuse_what_they_do_not_reproduce(monkeypatch):
    """Padding crops, unknown steps and a result that differs on a probe image all leave the
    processor in charge (``None``)."""
    import transformers
    from omnimodal_vision import pixels

    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 40, "width": 40})
    assert pixels.fast_pixels(proc) is None  # the crop is larger than the resized image: HF pads
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc.do_pad = True
    assert pixels.fast_pixels(proc) is None  # a step it does not do
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    assert pixels.fast_pixels(proc) is not None
    call = pixels.TowerPixels.__call__
    monkeypatch.setattr(pixels.TowerPixels, "__call__", lambda self, image: call(self, image) + 1e-6)
    assert pixels.fast_pixels(proc) is None  # the probe check catches any difference


def test_conv_stem_keeps_the_grid_sees_across_patch_borders_and_round_trips(tmp_path, vision_demo):
    from omnimodal_vision.encoders import ViTEncoder

    from omnimodal.model import OmniModel

    from .conftest import texts_of, tiny_decoder_cfg

    torch.manual_seed(0)
    patch, conv = ViTEncoder(patch_size=16, width=32, depth=1, heads=2).eval(), ViTEncoder(patch_size=16, width=32, depth=1, heads=2, stem="conv").eval()
    pixels = torch.randn(2, 3, 64, 64)
    assert patch(pixels)[0].shape == conv(pixels)[0].shape == (2, 16, 32)
    nudged = pixels.clone()
    nudged[:, :, 15, 15] += 1.0  # the last pixel of patch (0, 0): only the conv stem's position (1, 1) sees it
    for encoder, sees in ((patch, False), (conv, True)):
        stem = encoder.patch_embed(pixels)[..., 1, 1]
        assert torch.equal(stem, encoder.patch_embed(nudged)[..., 1, 1]) is not sees
    with pytest.raises(ConfigError, match="stem 'conv' needs patch_size a power of two, got 12"):
        ViTEncoder(image_size=48, patch_size=12, stem="conv")
    with pytest.raises(ConfigError, match="stem must be 'patch' or 'conv'"):
        ViTEncoder(stem="conv3")

    cfg = {**tiny_vision_cfg(), "encoder": {**tiny_vision_cfg()["encoder"], "stem": "conv"}}
    model = OmniModel.from_config({"decoder": tiny_decoder_cfg(), "modalities": {"vision": cfg}}, texts=texts_of([vision_demo["train"]]))
    model.train()
    model.encode_media("vision", {"pixel_values": pixels})  # BatchNorm's running statistics move
    model.eval()
    model.save_pretrained(tmp_path / "saved")
    loaded = OmniModel.from_pretrained(tmp_path / "saved").eval()
    assert torch.equal(model.encode_media("vision", {"pixel_values": pixels})[0], loaded.encode_media("vision", {"pixel_values": pixels})[0])
