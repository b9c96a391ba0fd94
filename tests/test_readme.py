"""Every Python block in the README runs, against tiny models and files this test writes.

A block runs as written in a workspace holding what the README names (``models/my-llama``,
``models/clip-vit``, ``cat.png``, ``meow.wav``, a run dir under ``outputs/``). A block that
needs more is marked in the README with ``<!-- readme-test: KIND (why) -->`` just above it:

- ``tiny``: the test adds tiny-model overrides and small data files to ``omnimodal.compose``;
- ``server``: the test serves a tiny model named ``model`` and points the block's URL at it;
- ``module``: a file of a plugin package, executed for its definitions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import omnimodal

from ._serve import serve_in_thread
from .conftest import ROOT, tiny_decoder_cfg, tiny_vision_cfg
from .test_inference import build_tiny_model, wav_bytes
from .test_training import TINY

BLOCK = re.compile(r"(?:<!-- readme-test: (?P<mark>\w+)[^\n]*-->\n)?```python\n(?P<code>.*?)```", re.S)
MARKS = {"tiny", "server", "module"}


@dataclass
class Block:
    line: int
    mark: str | None
    code: str


def readme_blocks() -> list[Block]:
    text = (ROOT / "README.md").read_text()
    return [Block(text[: m.start("code")].count("\n") + 1, m.group("mark"), m.group("code")) for m in BLOCK.finditer(text)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, vision_demo) -> Path:
    """What the README's blocks name, built tiny and offline."""
    from PIL import Image
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from omnimodal.decoder import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    tok = train_bpe_tokenizer(["What is this? a red circle", "hello world, what do you hear?"] * 5, vocab_size=300)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(root / "models/my-llama")
    tok.save_pretrained(root / "models/my-llama")
    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16)
    CLIPVisionModel(clip).save_pretrained(root / "models/clip-vit")
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(root / "models/clip-vit")
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")).save(root / "cat.png")
    (root / "meow.wav").write_bytes(wav_bytes(0.3))
    build_tiny_model(vision_demo, extras=True).save_pretrained(root / "outputs/2026-11-22/10-00-00/model")
    return root


def _serve(model_dir: Path):
    """Serve ``model_dir`` as ``model`` on a free port in this process; returns (url, stop)."""
    from omnimodal.inference import load
    from omnimodal.serving.app import ServerSettings, create_app

    app = create_app(load(model_dir, device="cpu"), ServerSettings(model_name="model", max_tokens=16, default_max_tokens=8))
    return serve_in_thread(app)


def test_every_block_is_plain_or_marked():
    blocks = readme_blocks()
    assert len(blocks) >= 6
    assert all(b.mark is None or b.mark in MARKS for b in blocks), [b.mark for b in blocks]


@pytest.mark.slow
@pytest.mark.parametrize("block", readme_blocks(), ids=lambda b: f"README.md:{b.line}")
def test_readme_block_runs(block: Block, workspace, vision_demo, monkeypatch, tmp_path):
    monkeypatch.chdir(workspace)
    namespace = {"__name__": "readme_block", "__file__": str(workspace / "block.py")}
    code = block.code
    stop = None
    if block.mark == "tiny":
        real = omnimodal.compose
        data = [f"data.{split}={vision_demo[split]}" for split in ("train", "val", "test")]
        small = [*TINY, *data, "trainer.max_steps=2"]
        monkeypatch.setattr(omnimodal, "compose", lambda overrides=(), **kw: real([*overrides, *small], **kw))
    elif block.mark == "server":
        url, stop = _serve(workspace / "outputs/2026-11-22/10-00-00/model")
        assert "http://127.0.0.1:8000" in code
        code = code.replace("http://127.0.0.1:8000", url)
    try:
        exec(compile(code, f"README.md:{block.line}", "exec"), namespace)
    finally:
        if stop is not None:
            stop()
    if block.mark == "module":
        assert any(callable(v) and getattr(v, "__module__", None) == "readme_block" for v in namespace.values())


def test_workspace_models_are_the_tiny_configs_the_suite_uses():
    # Guards the stand-ins: the README blocks run against the same tiny shapes as the other tests.
    assert tiny_decoder_cfg()["num_hidden_layers"] == 2 and tiny_vision_cfg()["encoder"]["depth"] == 1
