"""Nothing bent: the loss of a step weighs every label token the same wherever it lands;
a non-finite loss stops (naming the records) or is skipped and counted; evaluation comes after
the model is saved."""

from __future__ import annotations

import copy
import json
import subprocess
import textwrap

import lightning as L
import pytest
import torch

from omnimodal.data.dataset import Collator, ConversationDataset
from omnimodal.data.records import Record
from omnimodal.errors import NonFiniteLossError
from omnimodal.training.module import OmniLightningModule

from .conftest import PYTHON, ROOT, cli_env
from .test_training import TINY

FULL = {"lr": 1e-3, "train_decoder": True, "train_encoders": True, "train_projectors": True}


def _records(vision_demo, n: int = 16) -> list[Record]:
    """Image questions whose answers run from one word to a long sentence."""
    lines = vision_demo["train"].read_text().splitlines()[:n]
    out = []
    for i, line in enumerate(lines):
        r = json.loads(line)
        r["messages"][0]["content"][0]["path"] = str(vision_demo["train"].parent / r["messages"][0]["content"][0]["path"])
        answer = "red" if i % 2 else " ".join(["the shape is a blue circle near the top left"] * (1 + i // 3))
        r["messages"][1]["content"] = [{"type": "text", "text": answer}]
        out.append(Record(r["messages"], source=f"answers.jsonl:{i + 1}"))
    return out


class _GradProbe(OmniLightningModule):
    """Records the gradients the optimizer is about to use (after the token-count division)."""

    grads: dict[str, torch.Tensor] | None = None

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        if self.grads is None:
            self.grads = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}


def _loader(model, records, batch_size):
    ds = ConversationDataset(records, model.tokenizer, model.modalities, model.placeholder_ids, 256)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False,
                                       collate_fn=Collator(model.modalities, model.tokenizer.pad_token_id,
                                                          placeholder_ids=model.placeholder_ids))


def _trainer(accumulate: int = 1, steps: int = 1) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=0, accumulate_grad_batches=accumulate, gradient_clip_val=None)


def _grads(model, records, batch_size, accumulate):
    module = _GradProbe(copy.deepcopy(model), FULL)
    _trainer(accumulate).fit(module, train_dataloaders=_loader(module.model, records, batch_size))
    return module.grads


def _close(a: dict, b: dict) -> float:
    """Worst gradient difference relative to the gradient's own scale."""
    return max(float((a[k] - b[k]).abs().max() / (b[k].abs().max() + 1e-12)) for k in b)


def test_accumulation_4x4_gives_the_gradients_of_one_batch_of_16(tiny_model, vision_demo, monkeypatch):
    torch.manual_seed(0)
    records = _records(vision_demo)
    passes = []  # gradient passes: none without accumulation (the loss is divided in the step)
    real_mul = torch._foreach_mul_
    monkeypatch.setattr(torch, "_foreach_mul_", lambda *a, **k: (passes.append(len(a[0])), real_mul(*a, **k))[1])
    big = _grads(tiny_model, records, 16, 1)
    assert passes == []
    accumulated = _grads(tiny_model, records, 4, 4)
    assert len(passes) == 1
    assert set(big) == set(accumulated) and len(big) > 10
    assert _close(accumulated, big) < 1e-4

    # Negative control: the old mean of per-micro-batch means differs on this data.
    model = copy.deepcopy(tiny_model)
    model.train()
    for batch in _loader(model, records, 4):
        (model(**batch).loss / 4).backward()
    mean_of_means = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert _close(mean_of_means, big) > 1e-2


class _NaNAt(OmniLightningModule):
    """Turns the loss of the ``bad``-th training batch into NaN."""

    bad = 1
    calls = 0

    def _step(self, batch, reduction="mean"):
        loss = super()._step(batch, reduction)
        self.calls += 1
        return loss * float("nan") if self.calls == self.bad + 1 else loss


def test_nonfinite_loss_stops_naming_the_records(tiny_model, vision_demo):
    module = _NaNAt(copy.deepcopy(tiny_model), FULL)
    with pytest.raises(NonFiniteLossError) as err:
        _trainer(steps=3).fit(module, train_dataloaders=_loader(module.model, _records(vision_demo, 12), 4))
    msg = str(err.value)
    assert "batch 1" in msg and "answers.jsonl:5" in msg and "answers.jsonl:8" in msg
    assert "trainer.skip_nonfinite=true" in msg


def test_nonfinite_step_is_skipped_without_any_update_when_asked(tiny_model, vision_demo):
    records = _records(vision_demo, 8)
    module = _NaNAt(copy.deepcopy(tiny_model), FULL, skip_nonfinite=True)
    module.bad = 0
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    _trainer(steps=1).fit(module, train_dataloaders=_loader(module.model, records, 4))
    after = module.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step must not move any weight"
    assert len(module.nonfinite_skipped) == 1 and "answers.jsonl:1" in module.nonfinite_skipped[0]

    module = _NaNAt(copy.deepcopy(tiny_model), FULL, skip_nonfinite=True)  # the next steps train on
    _trainer(steps=2).fit(module, train_dataloaders=_loader(module.model, records, 4))
    assert len(module.nonfinite_skipped) == 1
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in module.model.state_dict().items())


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L, torch
    sys.path.insert(0, {root!r})
    from tests.conftest import texts_of, tiny_decoder_cfg, tiny_vision_cfg
    from tests.test_loss import FULL, _GradProbe, _records
    from omnimodal.model import OmniModel
    from omnimodal.training.datamodule import OmniDataModule

    devices, batch, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    demo = {{"train": __import__("pathlib").Path({train!r})}}
    torch.manual_seed(0)
    model = OmniModel.from_config({{"decoder": tiny_decoder_cfg(), "modalities": {{"vision": tiny_vision_cfg()}}}},
                                  texts=texts_of([demo["train"]]))
    records = _records(demo, 16)
    data = __import__("pathlib").Path(out).with_suffix(".jsonl")
    if int(__import__("os").environ.get("LOCAL_RANK", 0)) == 0:
        data.write_text("".join(json.dumps({{"messages": r.messages}}) + "\\n" for r in records))
    L.Trainer  # noqa
    dm = OmniDataModule({{"batch_size": batch, "num_workers": 0, "max_length": 256, "seed": 0}},
                        {{"train": [data], "val": [], "test": []}}, model.tokenizer, model.modalities, model.placeholder_ids)
    module = _GradProbe(model, FULL)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        gradient_clip_val=None)
    trainer.fit(module, datamodule=dm)
    if trainer.global_rank == 0:
        torch.save(module.grads, out)
    """
)


@pytest.mark.slow
def test_two_rank_ddp_gives_the_gradients_of_one_process(tmp_path, vision_demo):
    """Each rank holds half of the global batch (same permutation, every other sample), with
    answers of very different lengths: the all-reduced token count makes the step's gradient
    the one process's gradient over the whole batch."""
    script = tmp_path / "ddp_grads.py"
    script.write_text(DDP_SCRIPT.format(root=str(ROOT), train=str(vision_demo["train"])))
    runs = {}
    for devices, batch in ((1, 8), (2, 4)):
        out = tmp_path / f"grads_{devices}.pt"
        r = subprocess.run([PYTHON, str(script), str(devices), str(batch), str(out)], capture_output=True,
                           text=True, timeout=400, cwd=tmp_path, env=cli_env())
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        runs[devices] = torch.load(out)
    assert _close(runs[2], runs[1]) < 1e-4


DDP_SKIP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L, torch
    sys.path.insert(0, {root!r})
    from tests.conftest import texts_of, tiny_decoder_cfg, tiny_vision_cfg
    from tests.test_loss import FULL, _records
    from omnimodal.model import OmniModel
    from omnimodal.training.datamodule import OmniDataModule
    from omnimodal.training.module import OmniLightningModule

    class NaNOnRank1(OmniLightningModule):  # the second batch of rank 1 only gives a NaN loss
        calls = 0

        def _step(self, batch, reduction="mean"):
            loss = super()._step(batch, reduction)
            self.calls += 1
            return loss * float("nan") if self.trainer.global_rank == 1 and self.calls == 2 else loss

    out = sys.argv[1]
    demo = {{"train": __import__("pathlib").Path({train!r})}}
    torch.manual_seed(0)
    model = OmniModel.from_config({{"decoder": tiny_decoder_cfg(), "modalities": {{"vision": tiny_vision_cfg()}}}},
                                  texts=texts_of([demo["train"]]))
    data = __import__("pathlib").Path(out).with_suffix(".jsonl")
    if int(__import__("os").environ.get("LOCAL_RANK", 0)) == 0:
        data.write_text("".join(json.dumps({{"messages": r.messages}}) + "\\n" for r in _records(demo, 16)))
    dm = OmniDataModule({{"batch_size": 2, "num_workers": 0, "max_length": 256, "seed": 0}},
                        {{"train": [data], "val": [], "test": []}}, model.tokenizer, model.modalities, model.placeholder_ids)
    module = NaNOnRank1(model, FULL, skip_nonfinite=True)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, gradient_clip_val=None)
    trainer.fit(module, datamodule=dm)
    torch.save({{"rank": trainer.global_rank, "skipped": module.nonfinite_skipped, "step": trainer.global_step,
                "weights": {{k: v.clone() for k, v in module.model.state_dict().items()}}}},
               f"{{out}}.{{trainer.global_rank}}")
    """
)


@pytest.mark.slow
def test_a_nonfinite_loss_on_one_ddp_rank_skips_the_step_on_every_rank(tmp_path, vision_demo):
    """Under DDP with ``trainer.skip_nonfinite``, a NaN on one rank skips that optimizer step on
    all ranks together (no rank waits in a gradient all-reduce the other never joins), the
    ranks' weights stay identical and finite, the run goes on to its last step, and every rank
    reports the records of the rank whose loss was NaN."""
    script = tmp_path / "ddp_skip.py"
    script.write_text(DDP_SKIP_SCRIPT.format(root=str(ROOT), train=str(vision_demo["train"])))
    out = tmp_path / "skip.pt"
    r = subprocess.run([PYTHON, str(script), str(out)], capture_output=True, text=True, timeout=400, cwd=tmp_path, env=cli_env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    ranks = [torch.load(f"{out}.{rank}") for rank in (0, 1)]
    for res in ranks:
        assert res["step"] == 3
        assert len(res["skipped"]) == 1 and "step 1," in res["skipped"][0]
        # every rank names the records of the rank whose loss was NaN, not its own finite batch
        assert "rank 1:" in res["skipped"][0] and "rank 0:" not in res["skipped"][0] and "(loss nan)" in res["skipped"][0]
    w0, w1 = ranks[0]["weights"], ranks[1]["weights"]
    assert all(torch.isfinite(v).all() for v in w0.values() if v.is_floating_point())
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "the ranks' weights diverged"


@pytest.mark.slow
def test_model_is_saved_before_evaluation_and_a_failed_evaluation_says_so(tmp_path, vision_demo):
    run = tmp_path / "run"
    data = [f"data.{split}={vision_demo[split]}" for split in ("train", "val", "test")]
    out = subprocess.run(
        [PYTHON, "-m", "omnimodal.cli", "train", *TINY, *data, "trainer.max_steps=2", "data.max_new_tokens=-1",
         f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=cli_env(),
    )
    assert out.returncode == 3, out.stdout[-2000:] + out.stderr[-3000:]
    assert "evaluation failed" in out.stderr and f"omnimodal eval {run}" in out.stderr
    assert (run / "model" / "omnimodal.json").is_file() and (run / "model" / "model.safetensors").is_file()
    assert "eval_error" in json.loads((run / "result.json").read_text())
