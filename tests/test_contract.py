"""The plugin contract (omnimodal.testing) over every registered modality and encoder kind.

Declared token counts == what encoder + projector emit, masks, a mixed-size batch, save ->
load, bad items named: for each built-in modality with its default (Hydra) config, for each
pretrained tower kind from a tiny config saved offline (CLIP, SigLIP, SigLIP2 at variable
resolution, Whisper), and for a third-party modality installed as a distribution. The kit
itself is shown to fail on each broken rule.
"""

from __future__ import annotations

import pytest
import transformers

from omnimodal import plugins
from omnimodal.testing import (
    ContractError,
    check_modality,
    default_config,
    modality_contract_test,
    registered_modalities,
)

from .conftest import tiny_vision_cfg
from .test_audio import save_tiny_whisper
from .test_plugins import install_pointcloud


@pytest.mark.parametrize("name", registered_modalities())
def test_every_registered_modality_meets_the_contract(name, tmp_path):
    report = check_modality(name, tmp_path)
    assert len(report.checks) == 7, report


def save_tiny_tower(path, kind: str):
    """A tiny random CLIP / SigLIP / SigLIP2 vision tower and its processor, saved to ``path``."""
    if kind == "clip":
        cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
        model, proc = transformers.CLIPVisionModel(cfg), transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    elif kind == "siglip":
        cfg = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
        model, proc = transformers.SiglipVisionModel(cfg), transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    else:  # NaFlex: each image keeps its aspect ratio within a budget of max_num_patches
        cfg = transformers.Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8, num_patches=64)
        model = transformers.Siglip2VisionModel(cfg)
        proc = _siglip2_processor()
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def _siglip2_processor():
    cls = getattr(transformers, "Siglip2ImageProcessorPil", None) or transformers.Siglip2ImageProcessor
    return cls(patch_size=8, max_num_patches=24)


@pytest.mark.parametrize("kind, features", [("clip", "patch"), ("clip", "cls_patch"), ("siglip", "patch"), ("siglip2", "patch")])
def test_pretrained_vision_towers_meet_the_contract_offline(kind, features, tmp_path):
    path = save_tiny_tower(tmp_path / kind, kind)
    cfg = {**tiny_vision_cfg(), "encoder": {"kind": "hf", "path": str(path), "feature_layer": -1, "features": features}}
    report = check_modality("vision", tmp_path, cfg, n_items=6)
    if kind == "siglip2":  # variable resolution: the token count follows each image's aspect ratio
        assert len(set(report.lengths)) > 1 and max(report.lengths) <= 24, report
    else:
        assert set(report.lengths) == {16 + (kind == "clip" and features == "cls_patch")}


def test_whisper_meets_the_contract_offline(tmp_path):
    path = save_tiny_whisper(tmp_path / "whisper")
    cfg = {**default_config("audio"), "encoder": {"kind": "whisper", "path": str(path), "feature_layer": -1}}
    report = check_modality("audio", tmp_path, cfg)
    assert len(set(report.lengths)) > 1


@pytest.fixture
def pointcloud(tmp_path, monkeypatch):
    """The third-party pointcloud plugin installed as a distribution on sys.path."""
    site = install_pointcloud(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    plugins.reset()
    return site


def test_third_party_modality_meets_the_contract(pointcloud, tmp_path):
    assert "pointcloud" in registered_modalities()
    report = check_modality("pointcloud", tmp_path, {**default_config("pointcloud"), "projector": {"kind": "pool", "stride": 2}})
    assert len(set(report.num_tokens)) > 1  # several sizes really reached the check


def test_one_line_contract_test_for_plugin_authors(pointcloud, tmp_path):
    test = modality_contract_test("pointcloud")
    assert test.__name__ == "test_pointcloud_contract"
    assert "save -> load" in test(tmp_path).checks


@pytest.mark.parametrize(
    "bug, message",
    [
        ("length_off_by_one", r"step 'encoder length' failed: .*emits \[\d+\] valid positions, the data side declared \[\d+\]"),
        ("encoder_in_data_worker", r"step 'data side' failed: preparing items created \d+ weight tensor"),
        ("mutate_cfg", r"build_encoder changed its config \(keys encoder.built\)"),
        ("leak_padding", r"pointcloud example item \d gives other encoder features in a mixed-size batch"),
        ("anonymous_error", r"does not name the item \('pointcloud bad item 0'\)"),
    ],
)
def test_the_contract_check_catches_each_broken_rule(pointcloud, tmp_path, bug, message):
    cfg = {**default_config("pointcloud"), "bug": bug}
    with pytest.raises(ContractError, match=message):
        check_modality("pointcloud", tmp_path, cfg)
