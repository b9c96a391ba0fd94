"""The splice: pseudo-tokens land exactly at placeholder positions; text positions untouched."""

import pytest
import torch

from omnimodal.data.dataset import Collator, ConversationDataset
from omnimodal.data.records import Record
from omnimodal.errors import SpliceError


def _record(parts, answer="red", source="mem:1"):
    return Record(
        [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
        source,
    )


def test_pseudo_tokens_land_at_placeholders_and_text_is_untouched(tiny_model, vision_demo):
    model = tiny_model.eval()
    img = str(vision_demo["train"].parent / "images/train/00000.png")
    img2 = str(vision_demo["train"].parent / "images/train/00001.png")
    rec = _record([{"type": "text", "text": "Compare"}, {"type": "image", "path": img}, {"type": "text", "text": "with"}, {"type": "image", "path": img2}])
    ds = ConversationDataset([rec], model.tokenizer, model.modalities, model.placeholder_ids)
    batch = Collator(model.modalities, model.tokenizer.pad_token_id)([ds[0]])
    ids = batch["input_ids"]
    embeds = model.embed(ids, batch["media"])
    plain = model.decoder.get_input_embeddings()(ids)
    slots = ids == model.modality_token["vision"]
    assert int(slots.sum()) == 2 * 16
    assert torch.equal(embeds[~slots], plain[~slots])
    tokens, mask = model.encode_media("vision", batch["media"]["vision"])
    positions = slots[0].nonzero().squeeze(1)
    assert torch.allclose(embeds[0, positions[:16]], tokens[0])  # first image first
    assert torch.allclose(embeds[0, positions[16:]], tokens[1])


def test_items_of_several_samples_keep_their_order(tiny_model, vision_demo):
    model = tiny_model.eval()
    root = vision_demo["train"].parent
    recs = [_record([{"type": "image", "path": str(root / f"images/train/{i:05d}.png")}]) for i in range(3)]
    ds = ConversationDataset(recs, model.tokenizer, model.modalities, model.placeholder_ids)
    batch = Collator(model.modalities, model.tokenizer.pad_token_id)([ds[i] for i in range(3)])
    embeds = model.embed(batch["input_ids"], batch["media"])
    tokens, _ = model.encode_media("vision", batch["media"]["vision"])
    for row in range(3):
        pos = (batch["input_ids"][row] == model.modality_token["vision"]).nonzero().squeeze(1)
        assert torch.allclose(embeds[row, pos], tokens[row])


def test_placeholder_item_mismatch_is_a_clear_error(tiny_model, vision_demo):
    model = tiny_model
    img = str(vision_demo["train"].parent / "images/train/00000.png")
    ds = ConversationDataset([_record([{"type": "image", "path": img}])], model.tokenizer, model.modalities, model.placeholder_ids)
    batch = Collator(model.modalities, model.tokenizer.pad_token_id)([ds[0]])
    two = {"vision": {"pixel_values": batch["media"]["vision"]["pixel_values"].repeat(2, 1, 1, 1)}}
    with pytest.raises(SpliceError, match=r"vision: 16 placeholder tokens.*32 pseudo-tokens from 2 item"):
        model.embed(batch["input_ids"], two)
    with pytest.raises(SpliceError, match="no vision items"):
        model.embed(batch["input_ids"], {})


def test_placeholder_string_typed_in_text_names_the_sample(tiny_model, vision_demo):
    model = tiny_model
    img = str(vision_demo["train"].parent / "images/train/00000.png")
    rec = _record([{"type": "image", "path": img}, {"type": "text", "text": "what is <image> here"}], source="data.jsonl:7")
    ds = ConversationDataset([rec], model.tokenizer, model.modalities, model.placeholder_ids)
    with pytest.raises(SpliceError, match="data.jsonl:7"):
        ds[0]


def test_generate_uses_the_decoders_generate(tiny_model, vision_demo):
    model = tiny_model.eval()
    img = str(vision_demo["train"].parent / "images/train/00000.png")
    recs = [_record([{"type": "image", "path": img}, {"type": "text", "text": "What colour?"}]), _record([{"type": "text", "text": "Hi"}])]
    ds = ConversationDataset(recs, model.tokenizer, model.modalities, model.placeholder_ids, mode="generate")
    batch = Collator(model.modalities, model.tokenizer.pad_token_id, "left")([ds[0], ds[1]])
    out = model.generate(batch["input_ids"], batch["attention_mask"], batch["media"], max_new_tokens=3)
    assert out.shape[0] == 2 and out.shape[1] <= 3
    # Batched (left-padded) generation agrees with one-by-one.
    single = Collator(model.modalities, model.tokenizer.pad_token_id, "left")([ds[1]])
    out1 = model.generate(single["input_ids"], single["attention_mask"], single["media"], max_new_tokens=3)
    assert torch.equal(out[1, : out1.shape[1]], out1[0])


def test_scratch_decoder_takes_its_init_scale_from_config():
    """``decoder.initializer_range`` reaches the scratch Llama (the demo uses 0.2, not HF's 0.02)."""
    from omnimodal.decoder import build_decoder
    from omnimodal.model import build_tokenizer

    from .conftest import tiny_decoder_cfg

    cfg = tiny_decoder_cfg()
    tok = build_tokenizer(cfg, ["What colour is the square?", "red", "blue"])
    stds = {}
    for scale in (0.02, 0.2):
        torch.manual_seed(0)
        dec = build_decoder({**cfg, "initializer_range": scale}, tok)
        assert dec.config.initializer_range == scale
        stds[scale] = float(dec.model.layers[0].mlp.up_proj.weight.std())
    assert stds[0.02] == pytest.approx(0.02, rel=0.1) and stds[0.2] == pytest.approx(0.2, rel=0.1)
