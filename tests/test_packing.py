"""Sequence packing: packed rows give the same per-sample losses and gradients as unpacked
batches, with media of several modalities in one row; a leaking mask is caught."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from omnimodal.data.dataset import Collator, ConversationDataset
from omnimodal.data.packing import PackingCollator, first_fit
from omnimodal.data.records import Record
from omnimodal.errors import ConfigError

from .test_inference import build_tiny_model, wav_bytes


def test_first_fit_decreasing_is_deterministic_and_bounded():
    lengths = [50, 200, 120, 80, 80, 30, 256]
    bins = first_fit(lengths, 256)
    assert bins == first_fit(lengths, 256)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 256 for b in bins)
    assert len(bins) == 4  # 256 | 200+50 | 120+80+30 | 80


@pytest.fixture(scope="module")
def model_and_records(vision_demo, tmp_path_factory):
    model = build_tiny_model(vision_demo, extras=True)
    model.eval()  # no dropout: losses must agree to float precision
    tmp = tmp_path_factory.mktemp("packing")
    (tmp / "tone.wav").write_bytes(wav_bytes(0.4))
    lines = vision_demo["train"].read_text().splitlines()
    records = []
    for i, line in enumerate(lines[:6]):
        r = json.loads(line)
        image = {"type": "image", "path": str(vision_demo["train"].parent / r["messages"][0]["content"][0]["path"])}
        extra = []
        if "audio" in model.modalities and i % 2 == 0:
            extra.append({"type": "audio", "path": str(tmp / "tone.wav")})
        if "molecule" in model.modalities and i % 3 == 0:
            extra.append({"type": "molecule", "smiles": "c1ccccc1O"})
        answer = "red" if i % 2 else "a blue circle near the top " * (i + 1)
        messages = [{"role": "user", "content": [image, *extra, {"type": "text", "text": "What is it?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        records.append(Record(messages, source=f"mixed.jsonl:{i + 1}"))
    records.append(Record([{"role": "user", "content": [{"type": "text", "text": "hello"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}], source="mixed.jsonl:7"))
    return model, records


def _samples(model, records):
    ds = ConversationDataset(records, model.tokenizer, model.modalities, model.placeholder_ids, 512)
    return [ds[i] for i in range(len(ds))]


def _per_sample_losses(model, batch, rows_of_samples):
    """Summed token loss of each conversation, from each row's segments (or whole rows)."""
    out = model(**_full_logits(batch))
    logp = torch.nn.functional.cross_entropy(out.logits[:, :-1].transpose(1, 2).float(), batch["labels"][:, 1:],
                                             ignore_index=-100, reduction="none")
    owner = rows_of_samples(batch)[:, 1:]
    return torch.stack([logp[owner == k].sum() for k in range(1, int(owner.max()) + 1)]), logp.sum()


def _full_logits(batch):
    """The batch without the collator's loss positions: the model returns logits at every position."""
    return {k: v for k, v in batch.items() if k not in ("label_positions", "label_targets")}


def _unpacked_owner(batch):
    n = batch["input_ids"].shape[0]
    return (torch.arange(1, n + 1)[:, None] * batch["attention_mask"])


def _packed_owner(batch):
    # Number conversations 1..N in row-major packed order.
    seg = batch["segment_ids"]
    offsets = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), seg.max(1).values[:-1]]), 0)
    return torch.where(seg > 0, seg + offsets[:, None], torch.zeros_like(seg))


def test_packed_rows_match_unpacked_losses_and_gradients(model_and_records):
    model, records = model_and_records
    assert {"vision", "audio", "molecule"} <= set(model.modalities)
    samples = _samples(model, records)
    base = Collator(model.modalities, model.tokenizer.pad_token_id, placeholder_ids=model.placeholder_ids)  # as training collates
    packed = PackingCollator(base, max_length=max(len(s["input_ids"]) for s in samples) + 40)(samples)
    assert packed["input_ids"].shape[0] < len(samples), "several conversations must share a row"
    assert any(len(set(row.tolist()) - {0}) >= 3 for row in packed["segment_ids"])
    order = [int(s) for s in packed["index"]]
    unpacked = base([samples[i] for i in order])  # the same conversations in the packed order

    a = copy.deepcopy(model)
    b = copy.deepcopy(model)
    per_packed, total_p = _per_sample_losses(a, packed, _packed_owner)
    per_unpacked, total_u = _per_sample_losses(b, unpacked, _unpacked_owner)
    torch.testing.assert_close(per_packed, per_unpacked, rtol=1e-5, atol=1e-5)
    total_p.backward()
    total_u.backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if pb.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)

    # Negative control: the same rows with a plain padding mask let conversations see each other.
    leaky = {k: v for k, v in _full_logits(packed).items() if k != "segment_ids"}
    out = model(**leaky)
    logp = torch.nn.functional.cross_entropy(out.logits[:, :-1].transpose(1, 2).float(), leaky["labels"][:, 1:],
                                             ignore_index=-100, reduction="none")
    owner = _packed_owner(packed)[:, 1:]
    per_leaky = torch.stack([logp[owner == k].sum() for k in range(1, int(owner.max()) + 1)])
    assert not torch.allclose(per_leaky, per_unpacked, rtol=1e-5, atol=1e-5)


def test_packed_labels_never_cross_a_boundary(model_and_records):
    model, records = model_and_records
    samples = _samples(model, records)
    packed = PackingCollator(Collator(model.modalities, model.tokenizer.pad_token_id), 512)(samples)
    seg, labels, pos = packed["segment_ids"], packed["labels"], packed["position_ids"]
    starts = (seg > 0) & (torch.nn.functional.pad(seg, (1, 0))[:, :-1] != seg)
    assert (labels[starts] == -100).all() and (pos[starts] == 0).all()
    assert int(starts.sum()) == len(samples)
    assert int((labels != -100).sum()) == sum(sum(lab != -100 for lab in s["labels"][1:]) for s in samples)


def test_flex_block_mask_gives_the_unpacked_losses_and_auto_picks_mask_off_cuda(model_and_records, monkeypatch):
    """``decoder.packed_attention=flex`` (the CUDA default): the block mask gives each packed
    conversation the losses it has alone. Forward only: flex attention's backward needs CUDA
    (the GPU benchmark trains through it). Transformers compiles flex attention; here the eager
    reference implementation runs instead (no C++ build on the test machine)."""
    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw))
    model, records = model_and_records
    samples = _samples(model, records)
    base = Collator(model.modalities, model.tokenizer.pad_token_id, placeholder_ids=model.placeholder_ids)
    packed = PackingCollator(base, max_length=max(len(s["input_ids"]) for s in samples) + 40)(samples)
    unpacked = base([samples[int(i)] for i in packed["index"]])
    flex = copy.deepcopy(model)
    flex.decoder_cfg["packed_attention"] = "flex"
    assert model.packed_attention(torch.device("cpu")) == "mask"  # auto, off CUDA
    assert flex.packed_attention(torch.device("cpu")) == "flex"
    with torch.no_grad():
        per_flex, _ = _per_sample_losses(flex, packed, _packed_owner)
        per_unpacked, _ = _per_sample_losses(model, unpacked, _unpacked_owner)
    torch.testing.assert_close(per_flex, per_unpacked, rtol=1e-5, atol=1e-5)
    assert flex.decoder.config._attn_implementation != "flex_attention"  # restored after the call

    flex.decoder_cfg["packed_attention"] = "dense"
    with pytest.raises(ConfigError, match="packed_attention"):
        flex.packed_attention(torch.device("cpu"))
