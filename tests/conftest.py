"""Shared fixtures: tiny configs, tiny demo data, a clean plugin registry per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

torch.set_num_threads(2)


def tiny_decoder_cfg() -> dict:
    return {
        "kind": "scratch",
        "architecture": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 256,
        "tokenizer": {"kind": "bpe", "vocab_size": 400},
    }


def tiny_vision_cfg(projector: dict | None = None) -> dict:
    return {
        "encoder": {"kind": "vit", "patch_size": 16, "width": 32, "depth": 1, "heads": 2, "features": "patch"},
        "projector": projector or {"kind": "mlp", "hidden_dim": None},
        "image_size": 64,
        "resize": "squash",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "train_encoder": True,
    }


@pytest.fixture(autouse=True)
def _fresh_registry():
    from omnimodal import plugins

    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture(scope="session")
def vision_demo(tmp_path_factory) -> dict[str, Path]:
    """A small coloured-shapes set: 40 train images, 8 val, 8 test."""
    from omnimodal_vision.demo import build

    root = tmp_path_factory.mktemp("vision_demo")
    return build(root, seed=0, sizes={"train": 40, "val": 8, "test": 8})


def texts_of(paths) -> list[str]:
    from omnimodal.data.dataset import training_texts
    from omnimodal.data.records import read_jsonl

    return [text for p in paths for text in training_texts(read_jsonl(p, {"image": "vision"}))]


@pytest.fixture
def tiny_model(vision_demo):
    from omnimodal.model import OmniModel

    torch.manual_seed(0)
    cfg = {"decoder": tiny_decoder_cfg(), "modalities": {"vision": tiny_vision_cfg()}}
    return OmniModel.from_config(cfg, texts=texts_of([vision_demo["train"]]))


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
