"""No waste on the hot path: the training splice goes by the collator's indices (no host-device
sync, the same values and gradients as the placeholder-mask splice), and without gradient
accumulation the token-weighted loss needs no pass over the gradients."""

from __future__ import annotations

import copy
import time
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from omnimodal.data.dataset import Collator
from omnimodal.data.packing import PackingCollator
from omnimodal.errors import SpliceError

from . import test_packing
from .test_packing import _samples

model_and_records = test_packing.model_and_records  # the fixture: vision, audio and molecule records

# Ops whose output shape depends on tensor values, or that read a tensor value to the host:
# each is a host-device sync on an accelerator.
SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::masked_scatter",
            "aten::equal", "aten::is_nonzero", "aten::unique", "aten::_unique2", "aten::item"}


class SyncOps(TorchDispatchMode):
    """Records every op dispatched inside the block that syncs on an accelerator (see SYNC_OPS),
    and boolean-mask indexing (``x[mask]``: a data-dependent shape)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        bool_index = name.startswith("aten::index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for a in args if isinstance(a, (list, tuple)) for i in a)
        if name in SYNC_OPS or bool_index:
            self.seen.append(name + (" (bool mask)" if bool_index else ""))
        return func(*args, **(kwargs or {}))


def _batches(model, records, pack: bool):
    """The same samples through the training collator (indices) and a plain one (mask path)."""
    samples = _samples(model, records)
    indexed = Collator(model.modalities, model.tokenizer.pad_token_id, placeholder_ids=model.placeholder_ids)
    plain = Collator(model.modalities, model.tokenizer.pad_token_id)
    if pack:
        longest = max(len(s["input_ids"]) for s in samples)
        indexed, plain = PackingCollator(indexed, longest + 40), PackingCollator(plain, longest + 40)
    return indexed(samples), plain(samples)


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_indexed_splice_gives_the_mask_splices_embeddings_losses_and_gradients_bitwise(model_and_records, pack):
    model, records = model_and_records
    fast, slow = _batches(model, records, pack)
    assert "splice" in fast and "splice" not in slow
    assert {"vision", "audio", "molecule"} <= set(fast["splice"])  # several modalities in the rows
    if pack:
        assert fast["input_ids"].shape[0] < len(records)
    for key in ("input_ids", "labels", "position_ids"):
        assert torch.equal(fast[key], slow[key])

    a, b = copy.deepcopy(model), copy.deepcopy(model)
    assert torch.equal(a.embed(fast["input_ids"], fast["media"], splice=fast["splice"]), b.embed(slow["input_ids"], slow["media"]))
    loss_a, loss_b = a(**fast, loss_reduction="sum").loss, b(**slow, loss_reduction="sum").loss
    assert torch.equal(loss_a, loss_b)
    loss_a.backward()
    loss_b.backward()
    grads = [(n, pa.grad, pb.grad) for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()) if pb.grad is not None]
    assert any(n.startswith("projectors.audio") for n, _, _ in grads) and any(n.startswith("encoders.molecule") for n, _, _ in grads)
    for name, ga, gb in grads:
        assert torch.equal(ga, gb), name


def test_indexed_splice_reads_no_device_value(model_and_records):
    """Every op of the splice itself (encoder and projector outputs given) is recorded: after the
    one-time mask check per modality, none syncs. The mask path trips the same recorder
    (negative control: the recorder sees what it looks for)."""
    model, records = model_and_records
    fast, slow = _batches(model, records, pack=True)
    with torch.no_grad():
        outputs = {name: model.encode_media(name, media) for name, media in fast["media"].items()}
        model._splice_checked.clear()
        model.encode_media = lambda name, media: outputs[name]  # the splice alone (instance attribute)
        try:
            with SyncOps() as first:
                model.embed(fast["input_ids"], fast["media"], splice=fast["splice"])
            with SyncOps() as later:
                model.embed(fast["input_ids"], fast["media"], splice=fast["splice"])
            with SyncOps() as by_mask:
                model.embed(slow["input_ids"], slow["media"])
        finally:
            del model.encode_media
    assert later.seen == []
    assert first.seen == ["aten::equal"] * len(outputs)  # the one-time check of each projector mask
    assert "aten::_local_scalar_dense" in by_mask.seen and "aten::index (bool mask)" in by_mask.seen


def _pad_front(forward):
    """A projector that puts one padding token *before* each item's tokens (same valid count)."""

    def padded(features, mask):
        tokens, out = forward(features, mask)
        return (torch.cat([torch.zeros_like(tokens[:, :1]), tokens], 1),
                torch.cat([torch.zeros_like(out[:, :1]), out], 1))

    return padded


def test_a_projector_mask_that_is_not_a_prefix_is_refused(model_and_records):
    """The splice takes each item's first ``num_tokens`` tokens: valid tokens after padding fail
    the one-time check, rather than splicing the padding token silently."""
    model, records = model_and_records
    fast, slow = _batches(model, records[:2], pack=False)
    model = copy.deepcopy(model)
    model.projectors["vision"].forward = _pad_front(model.projectors["vision"].forward)
    model._splice_checked.clear()  # a fresh model: nothing checked yet
    model.embed(slow["input_ids"], slow["media"])  # the mask path copes
    with pytest.raises(SpliceError, match="vision: the projector's mask does not hold the declared pseudo-tokens first"):
        model.embed(fast["input_ids"], fast["media"], splice=fast["splice"])


def test_the_contract_check_asks_for_valid_tokens_first(monkeypatch):
    from omnimodal.projectors import MLPProjector
    from omnimodal.testing import ContractError, check_modality

    from .conftest import tiny_vision_cfg

    original = MLPProjector.forward
    monkeypatch.setattr(MLPProjector, "forward", lambda self, f, m: _pad_front(original.__get__(self))(f, m))
    with pytest.raises(ContractError, match="projector mask.*valid pseudo-tokens must come first"):
        check_modality("vision", cfg=tiny_vision_cfg(), n_items=2)


def test_collator_names_the_sample_and_items_whose_placeholders_do_not_match(model_and_records):
    model, records = model_and_records
    samples = _samples(model, records[:2])
    token = model.placeholder_ids[model.modalities["vision"].placeholder]
    ids = list(samples[1]["input_ids"])
    ids[ids.index(token)] = model.tokenizer.pad_token_id  # one slot short (a hand-made or corrupted sample)
    n = samples[1]["input_ids"].count(token)
    collate = Collator(model.modalities, model.tokenizer.pad_token_id, placeholder_ids=model.placeholder_ids)
    with pytest.raises(SpliceError, match=rf"mixed.jsonl:2: {n - 1} vision placeholder tokens but its vision items give {n} pseudo-tokens \(items: mixed.jsonl:2: message 0 part 0 \(image\) \({n}\)\)"):
        collate([samples[0], dict(samples[1], input_ids=ids)])


def test_feature_cached_batches_splice_by_index_the_same(model_and_records, tmp_path):
    from omnimodal.data import feature_cache as fc

    model, records = model_and_records
    model = copy.deepcopy(model)
    model.feature_caches = {"vision": fc.ModalityCache("vision", fc.FeatureCache(tmp_path / "cache"), "ctx")}
    samples = _samples(model, records)
    collate = Collator(model.modalities, model.tokenizer.pad_token_id, cached=frozenset({"vision"}), placeholder_ids=model.placeholder_ids)
    plain = Collator(model.modalities, model.tokenizer.pad_token_id)(samples)
    with torch.no_grad():
        want = model.embed(plain["input_ids"], plain["media"])
        miss = collate(samples)  # first pass: misses, encoded and stored
        assert fc.CACHE_KEY in miss["media"]["vision"]
        assert torch.equal(model.embed(miss["input_ids"], miss["media"], splice=miss["splice"]), want)
        store = model.feature_caches["vision"].store
        store.flush()
        store.snapshot(time.time_ns())
        hit = collate(samples)
        got = model.embed(hit["input_ids"], hit["media"], splice=hit["splice"])
    assert all(h is not None for h in hit["media"]["vision"][fc.CACHE_KEY]["hits"])
    assert torch.equal(got, want)


def test_loss_positions_list_each_rows_label_positions_in_order_and_pad_the_rest():
    from omnimodal.data.dataset import loss_positions

    labels = torch.tensor([[-100, -100, 5, 6, -100],    # position 1 predicts 5, 2 predicts 6
                           [-100, 7, -100, 8, 9],       # 0 -> 7, 2 -> 8, 3 -> 9
                           [-100, -100, -100, -100, -100]])
    positions, targets = loss_positions(labels)
    assert positions.tolist() == [[1, 2, 0], [0, 2, 3], [0, 0, 0]]
    assert targets.tolist() == [[5, 6, -100], [7, 8, 9], [-100, -100, -100]]
    positions, targets = loss_positions(torch.full((2, 3), -100))
    assert positions.shape == targets.shape == (2, 1) and (targets == -100).all()  # never an empty K


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_logits_only_at_label_positions_give_the_full_logits_loss_and_gradients(model_and_records, pack):
    """The collator's ``label_positions`` make the decoder project only the positions the loss
    reads; the loss and every gradient are those of the full logits (float tolerance: the same
    terms, summed in another order)."""
    model, records = model_and_records
    batch, _ = _batches(model, records, pack)
    full = test_packing._full_logits(batch)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    kept, whole = a(**batch, loss_reduction="sum"), b(**full, loss_reduction="sum")
    rows, length = batch["input_ids"].shape
    k = int((batch["labels"][:, 1:] != -100).sum(1).max())
    assert kept.logits.shape == (rows, k, whole.logits.shape[-1]) and k < length
    assert whole.logits.shape[1] == length
    torch.testing.assert_close(kept.loss, whole.loss, rtol=1e-5, atol=1e-5)
    kept.loss.backward()
    whole.loss.backward()
    grads = [(n, pa.grad, pb.grad) for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()) if pb.grad is not None]
    assert any(n.endswith("lm_head.weight") for n, _, _ in grads) and any(n.startswith("projectors.molecule") for n, _, _ in grads)
    for name, ga, gb in grads:
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6, msg=name)
    # Negative control: the targets shifted by one row give another loss.
    shifted = dict(batch, label_targets=batch["label_targets"].roll(1, 0))
    assert not torch.allclose(a(**shifted, loss_reduction="sum").loss, whole.loss, rtol=1e-3)


def test_a_decoder_that_cannot_keep_positions_gets_the_full_logits(model_and_records, monkeypatch):
    """``keeps_logits``: transformers' causal LMs (also LoRA-wrapped) slice by positions; another
    decoder module is given no ``logits_to_keep`` and the loss comes from its full logits."""
    import omnimodal.model as om

    model, records = model_and_records
    batch, _ = _batches(model, records, pack=False)
    assert om.keeps_logits(model.decoder)
    assert not om.keeps_logits(torch.nn.Linear(2, 2))
    lora = copy.deepcopy(model)
    lora.apply_lora(r=2, alpha=4, dropout=0.0)
    assert om.keeps_logits(lora.decoder)
    with torch.no_grad():
        kept = model(**batch).loss
        monkeypatch.setattr(om, "keeps_logits", lambda decoder: False)
        out = model(**batch)
    assert out.logits.shape[1] == batch["input_ids"].shape[1]
    torch.testing.assert_close(out.loss, kept, rtol=1e-5, atol=1e-5)


def test_training_uses_fused_adamw_with_the_default_adamws_update(tiny_model, monkeypatch):
    """One kernel for all parameters instead of AdamW's per-parameter Python loop on the CPU; the
    update is the default AdamW's (float tolerance). A device without the kernel falls back."""
    from omnimodal.training.module import OmniLightningModule, adamw

    stage = {"lr": 1e-3, "weight_decay": 0.01, "train_decoder": True, "train_encoders": True, "train_projectors": True}
    module = OmniLightningModule(tiny_model, stage)
    monkeypatch.setattr(OmniLightningModule, "_total_steps", lambda self: 10)
    opt = module.configure_optimizers()["optimizer"]
    assert opt.defaults["fused"] is True
    a, b = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    torch.manual_seed(0)
    grads = [torch.randn_like(p) for p in a.parameters()]
    for model in (a, b):
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
    fused = adamw([{"params": list(a.parameters())}], lr=1e-3, weight_decay=0.01)
    plain = torch.optim.AdamW(list(b.parameters()), lr=1e-3, weight_decay=0.01)
    for _ in range(3):
        fused.step()
        plain.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(next(a.parameters()), next(tiny_model.parameters()))  # it did move

    real = torch.optim.AdamW

    def no_fused_kernel(params, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused_kernel)
    assert not adamw([{"params": [torch.nn.Parameter(torch.zeros(2))]}], lr=1e-3).defaults.get("fused")
    monkeypatch.setattr(torch.optim, "AdamW", real)
    # Mixed precision: Lightning clips gradients only with an optimizer that leaves unscaling to it.
    module._trainer = types.SimpleNamespace(precision="bf16-mixed")
    assert not module.configure_optimizers()["optimizer"].defaults.get("fused")


def _tensors(x, path=""):
    """``(path, tensor)`` for every tensor in a nested batch."""
    if isinstance(x, torch.Tensor):
        return [(path, x)]
    if isinstance(x, dict):
        return [t for k, v in x.items() for t in _tensors(v, f"{path}.{k}")]
    if isinstance(x, (list, tuple)):
        return [t for i, v in enumerate(x) for t in _tensors(v, f"{path}[{i}]")]
    return []


def _crossed(batch):
    """``batch`` pickled and unpickled as a data worker's batch is (shared-memory tensors)."""
    import io
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401 (registers the shared-memory reductions)

    buf = io.BytesIO()
    ForkingPickler(buf, pickle.HIGHEST_PROTOCOL).dump(batch)
    return pickle.loads(buf.getvalue())


def test_a_batch_leaves_a_worker_with_its_small_tensors_in_one_buffer(model_and_records):
    from omnimodal.data.transport import SMALL_BYTES, for_transport

    model, records = model_and_records
    collate = Collator(model.modalities, model.tokenizer.pad_token_id, placeholder_ids=model.placeholder_ids)
    batch = collate(_samples(model, records))
    big = torch.randn(SMALL_BYTES // 4 + 1)  # one element over the limit: travels on its own
    batch["extra"] = {"big": big, "flags": torch.tensor([True, False, True]), "half": torch.ones(3, dtype=torch.float16),
                      "strided": torch.arange(12.0).view(3, 4).t(), "scalar": torch.tensor(7), "empty": torch.zeros(0, 2)}
    packed = for_transport(batch)
    assert isinstance(packed, dict) and packed is not batch and all(packed[k] is batch[k] for k in batch)  # unpickled: the batch

    crossed = _crossed(packed)
    assert type(crossed) is dict
    before, after = _tensors(batch), _tensors(crossed)
    assert [p for p, _ in before] == [p for p, _ in after]
    assert {"media.vision.pixel_values", "media.audio.input_features", "media.molecule.edge_index", "splice.molecule.slots"} <= {
        p.lstrip(".") for p, _ in before}
    for (path, a), (_, b) in zip(before, after):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    assert [x for x in crossed["sources"]] == batch["sources"] and crossed["media_tokens"] == batch["media_tokens"]
    storages = {p: t.untyped_storage().data_ptr() for p, t in after if t.numel()}
    small = {s for p, s in storages.items() if p != ".extra.big"}
    assert len(small) == 1 and storages[".extra.big"] not in small  # one buffer, and the big tensor apart
    # The views do not overlap: writing one leaves every other as it was.
    views = [(p, t) for p, t in after if t.numel() and p != ".extra.big"]
    for i, (_, t) in enumerate(views):
        t.fill_(i + 2)
    for i, (p, t) in enumerate(views):
        assert torch.equal(t, torch.full_like(t, i + 2)), p

    a, b = copy.deepcopy(model), copy.deepcopy(model)
    fresh = _crossed(for_transport(collate(_samples(model, records))))
    assert torch.equal(a(**collate(_samples(model, records)), loss_reduction="sum").loss, b(**fresh, loss_reduction="sum").loss)


def test_the_training_loader_gives_the_same_batches_from_a_worker(model_and_records, tmp_path):
    import json

    from omnimodal.training.datamodule import OmniDataModule

    model, records = model_and_records
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"messages": r.messages}) + "\n" for r in records))

    def batches(workers):
        dm = OmniDataModule({"batch_size": 3, "num_workers": workers, "max_length": 512, "seed": 0}, {"train": [path]},
                            model.tokenizer, model.modalities, model.placeholder_ids)
        dm.setup("fit")
        return list(dm.train_dataloader())

    inline, from_worker = batches(0), batches(1)
    assert len(inline) == len(from_worker) == 3
    for a, b in zip(inline, from_worker):
        assert type(b) is dict
        ta, tb = _tensors(a), _tensors(b)
        assert [p for p, _ in ta] == [p for p, _ in tb]
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(ta, tb))
        assert len({t.untyped_storage().data_ptr() for _, t in tb if t.numel()}) == 1  # the demo's media are all small
