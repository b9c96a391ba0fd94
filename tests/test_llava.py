"""LLaVA parity: an OmniModel with a CLIP/SigLIP tower + mlp projector is a Llava model.

Logits match transformers' ``LlavaForConditionalGeneration`` holding the same weights, and
``omnimodal export --format llava`` writes a dir that Llava loads and that generates the same
tokens. Everything is tiny and offline: towers are built from config and saved to tmp dirs.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from PIL import Image

from omnimodal.data.chat import encode
from omnimodal.errors import ConfigError
from omnimodal.model import OmniModel

from .conftest import tiny_decoder_cfg, tiny_vision_cfg

TEXTS = [
    "what colour is the shape?", "red", "blue", "green", "a small square", "a large circle",
    "how many shapes are in the picture?", "one", "two", "three", "describe the image",
]


def _save_tower(path, kind: str):
    if kind == "clip":
        cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8)
        tower = transformers.CLIPVisionModel(cfg)
        proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        cfg = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8)
        tower = transformers.SiglipVisionModel(cfg)
        proc = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    tower.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def _model(tmp_path, kind: str = "clip", features: str = "patch", feature_layer: int = -2, projector: dict | None = None) -> OmniModel:
    torch.manual_seed(0)
    path = _save_tower(tmp_path / kind, kind)
    encoder = {"kind": "hf", "path": str(path), "feature_layer": feature_layer, "features": features}
    cfg = {"decoder": tiny_decoder_cfg(), "modalities": {"vision": {**tiny_vision_cfg(projector), "encoder": encoder}}}
    model = OmniModel.from_config(cfg, texts=TEXTS).eval()
    with torch.no_grad():  # larger than init-scale weights, so the image visibly drives the logits
        for p in model.projectors["vision"].parameters():
            p.mul_(20)
    return model


def _inputs(model: OmniModel, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """omnimodal's own prompt: chat template, placeholder expanded to the item's token count."""
    modality = model.modalities["vision"]
    item = modality.prepare(image, "img")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the shape?"}]}]
    enc = encode(model.tokenizer, messages, {"image": modality.placeholder}, model.placeholder_ids, [("image", item.num_tokens)], "t", add_generation_prompt=True)
    return torch.tensor([enc.input_ids]), item.features["pixel_values"][None]


def _image(seed: int = 0) -> Image.Image:
    rng = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (40, 48, 3), generator=rng, dtype=torch.uint8).numpy())


def _to_llava_key(key: str) -> str:
    """The mapping under test, written out independently of omnimodal.export."""
    for old, new in (
        ("decoder.model.", "model.language_model."),
        ("decoder.lm_head.", "lm_head."),
        ("encoders.vision.model.", "model.vision_tower."),
        ("projectors.vision.", "model.multi_modal_projector."),
    ):
        if key.startswith(old):
            return new + key[len(old):]
    raise AssertionError(f"unmapped key {key}")


@pytest.mark.parametrize(
    "kind, features, feature_layer, strategy, n_tokens",
    [("clip", "patch", -2, "default", 16), ("clip", "cls_patch", -1, "full", 17), ("siglip", "patch", -2, "full", 16)],
)
def test_logits_match_transformers_llava(tmp_path, kind, features, feature_layer, strategy, n_tokens):
    model = _model(tmp_path, kind, features, feature_layer)
    tower = model.encoders["vision"].model
    config = transformers.LlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=model.decoder.config.to_dict(),
        image_token_id=model.modality_token["vision"],
        image_seq_length=n_tokens,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=feature_layer,
        multimodal_projector_bias=True,
    )
    llava = transformers.LlavaForConditionalGeneration(config).eval()
    state = {_to_llava_key(k): v for k, v in model.state_dict().items()}
    assert set(state) == set(llava.state_dict())
    llava.load_state_dict(state, strict=True)

    input_ids, pixel_values = _inputs(model, _image())
    assert int((input_ids == config.image_token_id).sum()) == n_tokens
    with torch.no_grad():
        ours = model(input_ids, media={"vision": {"pixel_values": pixel_values}}).logits
        theirs = llava(input_ids=input_ids, pixel_values=pixel_values).logits
        blind = model.decoder(input_ids=input_ids).logits  # the raw placeholder embeddings
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert (ours - blind).abs().max() > 1e-3  # the image really went in


def test_export_loads_in_transformers_and_generates_the_same_tokens(tmp_path):
    from omnimodal.cli import main

    model = _model(tmp_path)
    model.save_pretrained(tmp_path / "run" / "model")
    out = tmp_path / "llava"
    assert main(["export", "--model", str(tmp_path / "run"), "--format", "llava", "--output", str(out)]) == 0

    llava = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = transformers.AutoProcessor.from_pretrained(out)
    assert isinstance(processor, transformers.LlavaProcessor)
    assert llava.config.vision_feature_select_strategy == "default" and llava.config.vision_feature_layer == -2

    loaded = OmniModel.from_pretrained(tmp_path / "run" / "model")
    for i in range(2):
        image = _image(i)
        input_ids, pixel_values = _inputs(loaded, image)
        # The exported processor and chat template give the very same ids and pixels.
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the shape?"}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        batch = processor(text=prompt, images=image, return_tensors="pt")
        assert torch.equal(batch["input_ids"], input_ids)
        assert torch.equal(batch["pixel_values"], pixel_values)

        mask = torch.ones_like(input_ids)
        ours = loaded.generate(input_ids, mask, media={"vision": {"pixel_values": pixel_values}}, max_new_tokens=8)
        with torch.no_grad():
            theirs = llava.generate(**batch, max_new_tokens=8, do_sample=False)[:, input_ids.shape[1]:]
        assert ours.tolist() == theirs.tolist()


def test_omnimodal_format_resaves(tmp_path):
    from omnimodal.cli import main

    model = _model(tmp_path)
    model.save_pretrained(tmp_path / "m")
    assert main(["export", "--model", str(tmp_path / "m"), "--format", "omnimodal", "--output", str(tmp_path / "copy")]) == 0
    copy = OmniModel.from_pretrained(tmp_path / "copy")
    theirs = copy.state_dict()
    assert list(theirs) == list(model.state_dict())
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())


def test_non_llava_models_are_refused_with_the_reason(tmp_path):
    from omnimodal_vision.llava import export_llava

    torch.manual_seed(0)
    vit = OmniModel.from_config({"decoder": tiny_decoder_cfg(), "modalities": {"vision": tiny_vision_cfg()}}, texts=TEXTS)
    with pytest.raises(ConfigError, match=r"encoder \(ViTEncoder, encoder kind 'vit'\) is not a Hugging Face vision tower"):
        export_llava(vit, tmp_path / "a")
    resampler = _model(tmp_path, projector={"kind": "resampler", "num_queries": 4})
    with pytest.raises(ConfigError, match=r"projector \(kind 'resampler', ResamplerProjector\) is not expressible as Llava"):
        export_llava(resampler, tmp_path / "b")
    narrow = _model(tmp_path, projector={"kind": "mlp", "hidden_dim": 16})
    with pytest.raises(ConfigError, match="hidden width is 16"):
        export_llava(narrow, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
