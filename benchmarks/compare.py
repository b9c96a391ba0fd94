"""omnimodal vs a plain PyTorch loop over transformers' ``LlavaForConditionalGeneration``.

    python benchmarks/compare.py [--rounds 10] [--records 256] [--batch-size 16] [--workers 1]
                                 [--skip step path startup process]

(``--records``: demo images; each gives about 3.3 question records, so 256 -> 858 conversations.)

Both sides use the same parts: a CLIP tower from a tiny config saved to a temporary directory
(224 px, loaded by path), the same Llama decoder weights and the same MLP projector (the Llava
model is omnimodal's own export, weight for weight), vision frozen, AdamW at lr 1e-4, the same
batches. Each side runs its own code for the same step: omnimodal computes logits only where
the loss reads them and uses AdamW's fused kernel (what ``omnimodal train`` does); the plain loop
is what a user writes: ``LlavaForConditionalGeneration(..., labels=...)`` (logits at every
position) and ``torch.optim.AdamW(params, lr)`` with its defaults (a per-parameter loop on the CPU).
Measured side by side in this one process, rounds alternating (A B, B A, ...), median of the
rounds:

(a) model step alone: forward + backward + optimizer step on one fixed batch;
(b) whole training path for one epoch over the same files: ``omnimodal``'s Lightning module and
    data module (its dataset, collator, sampler, the callbacks ``omnimodal train`` uses) vs a
    plain loop over a plain ``DataLoader`` (PIL + the tower's image processor + the tokenizer's
    chat template) with the same number of workers;
(c) start-up: a fresh process that trains one step, ``omnimodal train`` vs the plain script;
(d) process wall for one epoch: a fresh ``omnimodal train`` over the training file (its data
    loader, callbacks, checkpoints, logs and loss plot; no evaluation, no saved model) vs a
    fresh process running (b)'s plain loop, start-up and exit included.

Columns: samples/s, non-pad tokens/s, ratio (omnimodal / plain; > 1 is faster; beside it the
ratios taken within each round: their median, range, and in how many rounds omnimodal was
faster, which tells a difference from this machine's noise), overhead (the
share of the epoch's wall time spent outside the model's forward, the backward and the
optimizer's update: data waits, the framework's hooks and logging, a gradient pass; timed the
same way on both sides; the model step (a) is all forward/backward/update, so "-"), padding
share, peak RSS.

Before/after of a change to omnimodal: run this same script over another checkout's package,
e.g. ``PYTHONPATH=<base>:<base>/plugins python benchmarks/compare.py`` with ``<base>`` a
``git archive`` of the older commit (the script copes with an omnimodal whose collator has no
splice indices).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve()


class PeakRSS:
    """The largest resident set size seen while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()

        def sample():
            while not self.stop.is_set():
                rss = self.proc.memory_info().rss + sum(c.memory_info().rss for c in self.proc.children(recursive=True))
                self.peak = max(self.peak, rss)
                time.sleep(0.02)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def build_parts(root: Path, records: int, image_size: int) -> dict[str, Any]:
    """Demo data, a saved tiny CLIP tower, and the omnimodal model built on it."""
    from omnimodal_vision.demo import build
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from omnimodal.data.dataset import answer_text, question_text
    from omnimodal.data.records import read_jsonl
    from omnimodal.model import OmniModel

    files = build(root / "data", seed=0, sizes={"train": records, "val": 8, "test": 8})
    clip_dir = root / "clip"
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=6, num_attention_heads=4,
                                     image_size=image_size, patch_size=32)).save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(clip_dir)
    cfg = {
        "decoder": {"kind": "scratch", "architecture": "llama", "hidden_size": 256, "intermediate_size": 688,
                    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
                    "max_position_embeddings": 512, "tokenizer": {"kind": "bpe", "vocab_size": 2000}},
        "modalities": {"vision": {"encoder": {"kind": "hf", "path": str(clip_dir), "feature_layer": -2, "features": "patch"},
                                  "projector": {"kind": "mlp", "hidden_dim": None}, "train_encoder": False}},
    }
    recs = list(read_jsonl(files["train"], {"image": "vision"}))
    model = OmniModel.from_config(cfg, texts=[question_text(r) for r in recs] + [answer_text(r) for r in recs])
    return {"files": files, "model": model, "cfg": cfg, "clip_dir": clip_dir}


def freeze_vision(model) -> None:
    model.set_trainable("encoders.vision", False)


def llava_of(model):
    from omnimodal_vision.llava import to_llava

    llava = to_llava(model).train()
    llava.model.vision_tower.requires_grad_(False)
    llava.model.vision_tower.eval()
    return llava


def optimizer(params) -> torch.optim.Optimizer:
    """The plain loop's optimizer: AdamW as a user writes it (its defaults)."""
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4)


def omnimodal_optimizer(params) -> torch.optim.Optimizer:
    """The AdamW ``omnimodal train`` builds (its fused kernel where the device has one; an older
    omnimodal, measured for a before/after, has the default one)."""
    try:
        from omnimodal.training.module import adamw
    except ImportError:
        return optimizer(params)
    return adamw([{"params": [p for p in params if p.requires_grad]}], lr=1e-4)


def training_collator(model):
    """The collator ``omnimodal train`` uses: with the splice's precomputed indices (an older
    omnimodal, measured for a before/after, has no ``placeholder_ids`` argument: mask splice)."""
    from omnimodal.data.dataset import Collator

    try:
        return Collator(model.modalities, model.tokenizer.pad_token_id, placeholder_ids=model.placeholder_ids)
    except TypeError:
        return Collator(model.modalities, model.tokenizer.pad_token_id)


def paired(omni: list[float], plain: list[float]) -> dict[str, float]:
    """Per-round ratios plain / omnimodal of the two sides' times (> 1: omnimodal faster).

    Rounds alternate, so a ratio taken within a round cancels the machine's drift between
    rounds (its speed moves by 5-10% between runs here); the median, the range and how many
    rounds omnimodal won say whether a ratio near 1.0 is a difference or noise.
    """
    ratios = sorted(p / o for o, p in zip(omni, plain))
    return {"median": statistics.median(ratios), "low": ratios[0], "high": ratios[-1],
            "wins": sum(r > 1 for r in ratios), "rounds": len(ratios)}


def paired_text(r: dict[str, float]) -> str:
    return (f"paired rounds: median {r['median']:.2f}x, range {r['low']:.2f}-{r['high']:.2f}x, "
            f"omnimodal faster in {r['wins']} of {r['rounds']}")


# ---- (a) model step ----------------------------------------------------------------------------

def model_step(parts: dict[str, Any], batch_size: int, rounds: int, steps: int) -> dict[str, dict[str, float]]:
    from omnimodal.data.dataset import ConversationDataset
    from omnimodal.data.records import read_jsonl

    base = parts["model"]
    recs = list(read_jsonl(parts["files"]["train"], {"image": "vision"}))[:batch_size]
    ds = ConversationDataset(recs, base.tokenizer, base.modalities, base.placeholder_ids, 512)
    batch = training_collator(base)([ds[i] for i in range(len(ds))])
    omni = copy.deepcopy(base)
    freeze_vision(omni)
    omni.train()
    llava = llava_of(base)
    pixels = batch["media"]["vision"]["pixel_values"]
    with torch.no_grad():
        lo = omni(**batch).loss.item()
        ll = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels, labels=batch["labels"]).loss.item()
    print(f"same batch, same weights: loss omnimodal {lo:.6f} vs Llava {ll:.6f}")
    opts = {"omnimodal": omnimodal_optimizer(omni.parameters()), "plain": optimizer(llava.parameters())}

    def run(side: str) -> tuple[float, float]:
        opt = opts[side]
        t_inner = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            s = time.perf_counter()
            if side == "omnimodal":
                loss = omni(**batch).loss
            else:
                loss = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels, labels=batch["labels"]).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            t_inner += time.perf_counter() - s
        total = time.perf_counter() - t0
        return total / steps, 1 - t_inner / total

    run("omnimodal"), run("plain")  # warm-up
    times: dict[str, list[float]] = {"omnimodal": [], "plain": []}
    for r in range(rounds):
        for side in (("omnimodal", "plain") if r % 2 == 0 else ("plain", "omnimodal")):
            times[side].append(run(side)[0])
    n = batch["input_ids"].shape[0]
    real = int(batch["attention_mask"].sum())
    pad = 1 - real / batch["input_ids"].numel()
    out = {side: {"s_per_step": statistics.median(t), "samples_s": n / statistics.median(t), "tokens_s": real / statistics.median(t),
                  "padding": pad} for side, t in times.items()}
    out["paired"] = paired(times["omnimodal"], times["plain"])
    return out


# ---- (b) whole training path ---------------------------------------------------------------------

class PlainLlavaData(torch.utils.data.Dataset):
    """What a plain LLaVA loop does: read JSONL, PIL + image processor, chat template, labels."""

    def __init__(self, path: Path, tokenizer, processor, image_token: str, image_id: int, n_tokens: int):
        self.rows = [json.loads(line) for line in path.read_text().splitlines()]
        self.base = path.parent
        self.tok, self.proc, self.image_token, self.image_id, self.n_tokens = tokenizer, processor, image_token, image_id, n_tokens

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image

        msgs = self.rows[i]["messages"]
        image = Image.open(self.base / msgs[0]["content"][0]["path"]).convert("RGB")
        pixels = self.proc(images=image, return_tensors="pt")["pixel_values"][0]
        chat = [{"role": m["role"], "content": "\n".join(self.image_token if p["type"] == "image" else p["text"] for p in m["content"])} for m in msgs]
        enc = self.tok.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, labels = [], []
        for t, m in zip(enc["input_ids"], enc["assistant_masks"]):
            if t == self.image_id:
                ids += [t] * self.n_tokens
                labels += [-100] * self.n_tokens
            else:
                ids.append(t)
                labels.append(t if m else -100)
        return {"input_ids": ids, "labels": labels, "pixel_values": pixels}


def plain_collate(pad_id: int):
    def collate(samples):
        n, length = len(samples), max(len(s["input_ids"]) for s in samples)
        ids = torch.full((n, length), pad_id)
        labels = torch.full((n, length), -100)
        mask = torch.zeros((n, length), dtype=torch.long)
        for r, s in enumerate(samples):
            k = len(s["input_ids"])
            ids[r, :k], labels[r, :k], mask[r, :k] = torch.tensor(s["input_ids"]), torch.tensor(s["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": torch.stack([s["pixel_values"] for s in samples])}

    return collate


def image_tokens(parts: dict[str, Any]) -> tuple[str, int, int]:
    """The vision placeholder, its token id and the pseudo-tokens per image (what the plain
    loop expands each image token into), read off one rendered training conversation."""
    from omnimodal.data.dataset import ConversationDataset
    from omnimodal.data.records import read_jsonl

    model = parts["model"]
    placeholder = model.modalities["vision"].placeholder
    image_id = model.placeholder_ids[placeholder]
    first = ConversationDataset(list(read_jsonl(parts["files"]["train"], {"image": "vision"}))[:1], model.tokenizer,
                                model.modalities, model.placeholder_ids, 512)[0]
    return placeholder, image_id, first["input_ids"].count(image_id)


def whole_path(parts: dict[str, Any], batch_size: int, workers: int, rounds: int) -> dict[str, dict[str, float]]:
    import lightning as L
    from transformers import CLIPImageProcessor

    from omnimodal.training.datamodule import OmniDataModule
    from omnimodal.training.module import OmniLightningModule

    base, files = parts["model"], parts["files"]
    data_cfg = {"batch_size": batch_size, "num_workers": workers, "max_length": 512, "seed": 0}
    stage = {"lr": 1e-4, "train_encoders": False, "train_projectors": True, "train_decoder": True}
    placeholder, image_id, n_tokens = image_tokens(parts)
    proc = CLIPImageProcessor.from_pretrained(parts["clip_dir"])

    class Timer(L.Callback):
        """Sums the model's forward, the backward and the optimizer's update (the compute the plain
        loop times too); everything else in the epoch is the framework's overhead."""

        def __init__(self):
            self.inner = 0.0
            self.samples = self.tokens = self.padded = 0

        def on_train_start(self, trainer, module):
            model = module.model
            forward = model.forward

            def timed_forward(*args, **kwargs):  # OmniModel.forward: encoders, splice, decoder, loss
                s = time.perf_counter()
                try:
                    return forward(*args, **kwargs)
                finally:
                    self.inner += time.perf_counter() - s

            model.forward = timed_forward
            hook = module.on_before_optimizer_step

            def closure_done(optimizer):  # the last thing before the optimizer's update
                hook(optimizer)
                self.closure_end = time.perf_counter()

            module.on_before_optimizer_step = closure_done
            for opt in trainer.optimizers:
                opt.register_step_post_hook(lambda *_: setattr(self, "inner", self.inner + time.perf_counter() - self.closure_end))

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.samples += batch["input_ids"].shape[0]
            self.tokens += int(batch["attention_mask"].sum())
            self.padded += batch["input_ids"].numel()

        def on_before_backward(self, trainer, module, loss):
            self.backward_start = time.perf_counter()

        def on_after_backward(self, trainer, module):
            self.inner += time.perf_counter() - self.backward_start

    def omnimodal_epoch() -> dict[str, float]:
        model = copy.deepcopy(base)
        dm = OmniDataModule(data_cfg, {"train": [files["train"]], "val": [], "test": []}, model.tokenizer, model.modalities, model.placeholder_ids)
        timer = Timer()
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
        t0 = time.perf_counter()
        trainer.fit(OmniLightningModule(model, stage, {"vision": {"train_encoder": False}}), datamodule=dm)
        wall = time.perf_counter() - t0
        return {"wall": wall, "samples": timer.samples, "tokens": timer.tokens, "padded": timer.padded, "inner": timer.inner}

    def plain_epoch() -> dict[str, float]:
        llava = llava_of(base)
        t0 = time.perf_counter()
        ds = PlainLlavaData(files["train"], base.tokenizer, proc, placeholder, image_id, n_tokens)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                             collate_fn=plain_collate(base.tokenizer.pad_token_id), generator=torch.Generator().manual_seed(0))
        opt = optimizer(llava.parameters())
        inner = 0.0
        samples = tokens = padded = 0
        for batch in loader:
            s = time.perf_counter()
            loss = llava(**batch).loss
            loss.backward()
            opt.step()
            inner += time.perf_counter() - s
            opt.zero_grad(set_to_none=True)
            samples += batch["input_ids"].shape[0]
            tokens += int(batch["attention_mask"].sum())
            padded += batch["input_ids"].numel()
        return {"wall": time.perf_counter() - t0, "samples": samples, "tokens": tokens, "padded": padded, "inner": inner}

    runs: dict[str, list[dict[str, float]]] = {"omnimodal": [], "plain": []}
    peaks: dict[str, int] = {"omnimodal": 0, "plain": 0}
    epoch = {"omnimodal": omnimodal_epoch, "plain": plain_epoch}
    for r in range(rounds):
        for side in (("omnimodal", "plain") if r % 2 == 0 else ("plain", "omnimodal")):
            with PeakRSS() as peak:
                runs[side].append(epoch[side]())
            peaks[side] = max(peaks[side], peak.peak)
    out = {}
    for side, rs in runs.items():
        wall = statistics.median(r["wall"] for r in rs)
        last = rs[-1]
        out[side] = {"s_per_step": wall / max(1, last["samples"] / batch_size), "samples_s": last["samples"] / wall,
                     "tokens_s": last["tokens"] / wall, "padding": 1 - last["tokens"] / last["padded"],
                     "overhead": statistics.median(1 - r["inner"] / r["wall"] for r in rs), "peak_rss_mb": peaks[side] / 2**20}
    out["paired"] = paired([r["wall"] for r in runs["omnimodal"]], [r["wall"] for r in runs["plain"]])
    return out


# ---- (c) start-up ---------------------------------------------------------------------------------

PLAIN_STARTUP = """
import sys, time, torch
t0 = time.perf_counter()
from transformers import LlavaForConditionalGeneration
llava = LlavaForConditionalGeneration.from_pretrained(sys.argv[1])
batch = torch.load(sys.argv[2])
opt = torch.optim.AdamW([p for p in llava.parameters() if p.requires_grad], lr=1e-4)
llava(**batch).loss.backward(); opt.step()
"""


def startup_commands(parts: dict[str, Any], root: Path) -> dict[str, list[str]]:
    """The two commands of (c): a fresh process that loads the saved parts and trains one step."""
    from omnimodal_vision.llava import export_llava

    model = parts["model"]
    model.save_pretrained(root / "omni")
    export_llava(model, root / "llava")
    script = root / "plain_step.py"
    script.write_text(PLAIN_STARTUP)
    from omnimodal.data.dataset import ConversationDataset
    from omnimodal.data.records import read_jsonl

    recs = list(read_jsonl(parts["files"]["train"], {"image": "vision"}))[:4]
    ds = ConversationDataset(recs, model.tokenizer, model.modalities, model.placeholder_ids, 512)
    b = training_collator(model)([ds[i] for i in range(len(ds))])
    torch.save({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "labels": b["labels"],
                "pixel_values": b["media"]["vision"]["pixel_values"]}, root / "batch.pt")
    cmds = {
        "omnimodal": [sys.executable, "-m", "omnimodal.cli", "train", "modalities=[vision]", f"init_from={root / 'omni'}",
                      f"data.train={parts['files']['train']}", "trainer.max_steps=1", "evaluate=false", "save_model=false",
                      "data.batch_size=4", "data.num_workers=0", "trainer.enable_progress_bar=false", "stage=sft",
                      "vision/encoder@modalities.vision.encoder=clip", f"modalities.vision.encoder.path={parts['clip_dir']}",
                      f"hydra.run.dir={root / 'startup-run'}", *[f"decoder.{k}={v}" for k, v in parts["cfg"]["decoder"].items() if k not in ("tokenizer", "kind", "architecture")],
                      "modalities.vision.projector.hidden_dim=null"],
        "plain": [sys.executable, str(script), str(root / "llava"), str(root / "batch.pt")],
    }
    return cmds


PLAIN_EPOCH = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
from compare import PlainLlavaData, optimizer, plain_collate
from transformers import AutoTokenizer, CLIPImageProcessor, LlavaForConditionalGeneration
root, train, placeholder = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
image_id, n_tokens, batch_size, workers = (int(a) for a in sys.argv[5:9])
llava = LlavaForConditionalGeneration.from_pretrained(root / "llava").train()
llava.model.vision_tower.requires_grad_(False)
llava.model.vision_tower.eval()
tok = AutoTokenizer.from_pretrained(root / "tokenizer")
ds = PlainLlavaData(train, tok, CLIPImageProcessor.from_pretrained(root / "clip"), placeholder, image_id, n_tokens)
loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                     collate_fn=plain_collate(tok.pad_token_id), generator=torch.Generator().manual_seed(0))
opt = optimizer(llava.parameters())
for batch in loader:
    llava(**batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
"""


def epoch_commands(parts: dict[str, Any], root: Path, startup: dict[str, list[str]], batch_size: int,
                   workers: int) -> dict[str, list[str]]:
    """The two commands of (d): a fresh process that trains one epoch over the training file."""
    parts["model"].tokenizer.save_pretrained(root / "tokenizer")
    script = root / "plain_epoch.py"
    script.write_text(PLAIN_EPOCH)
    placeholder, image_id, n_tokens = image_tokens(parts)
    return {
        "omnimodal": [a for a in startup["omnimodal"] if not a.startswith(("trainer.max_steps=", "data.batch_size=", "data.num_workers="))]
        + ["trainer.max_epochs=1", f"data.batch_size={batch_size}", f"data.num_workers={workers}", "data.max_length=512"],
        "plain": [sys.executable, str(script), str(HERE.parent), str(root), str(parts["files"]["train"]), placeholder,
                  str(image_id), str(n_tokens), str(batch_size), str(workers)],
    }


def timed_processes(cmds: dict[str, list[str]], root: Path, rounds: int) -> dict[str, Any]:
    """Median wall of each side's command and the paired ratios, rounds alternating, each
    omnimodal run in an empty run dir."""
    walls: dict[str, list[float]] = {"omnimodal": [], "plain": []}
    for r in range(rounds):
        for side in (("omnimodal", "plain") if r % 2 == 0 else ("plain", "omnimodal")):
            shutil.rmtree(root / "startup-run", ignore_errors=True)
            t0 = time.perf_counter()
            done = subprocess.run(cmds[side], capture_output=True, text=True, cwd=root)
            if done.returncode != 0:
                raise SystemExit(f"{side} run failed: {' '.join(cmds[side])}\n{done.stderr[-3000:]}")
            walls[side].append(time.perf_counter() - t0)
    return {**{side: statistics.median(w) for side, w in walls.items()}, "paired": paired(walls["omnimodal"], walls["plain"])}


def table(title: str, res: dict[str, Any]) -> None:
    o, p = res["omnimodal"], res["plain"]
    print(f"\n{title}")
    print(f"{'':<10} {'samples/s':>10} {'tokens/s':>10} {'overhead':>9} {'padding':>8} {'peak RSS MB':>12}")
    for side, row in (("omnimodal", o), ("plain", p)):
        rss = f"{row['peak_rss_mb']:>12.0f}" if "peak_rss_mb" in row else f"{'-':>12}"
        overhead = f"{row['overhead']:>9.1%}" if "overhead" in row else f"{'-':>9}"
        print(f"{side:<10} {row['samples_s']:>10.1f} {row['tokens_s']:>10.0f} {overhead} {row['padding']:>8.1%} {rss}")
    print(f"{'ratio':<10} {o['samples_s'] / p['samples_s']:>9.2f}x {o['tokens_s'] / p['tokens_s']:>9.2f}x   ({paired_text(res['paired'])})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per round for (a)")
    ap.add_argument("--records", type=int, default=256, help="demo images (each gives about 3.3 conversations)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--startup-rounds", type=int, default=None, help="rounds of (c) (default: --rounds)")
    ap.add_argument("--process-rounds", type=int, default=None, help="rounds of (d) (default: --rounds)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["step", "path", "startup", "process"])
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="omnimodal-compare-") as tmp:  # removed afterwards, even on failure
        root = Path(tmp)
        parts = build_parts(root, args.records, args.image_size)
        freeze_vision(parts["model"])
        import omnimodal

        print(f"omnimodal from {Path(omnimodal.__file__).parent}")
        conversations = sum(1 for line in Path(parts["files"]["train"]).read_text().splitlines() if line.strip())
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch_size}, "
              f"{args.records} images = {conversations} conversations per epoch, {args.workers} worker(s), "
              f"median of {args.rounds} alternating rounds")
        if "step" not in args.skip:
            table("(a) model step alone (fixed batch)", model_step(parts, args.batch_size, args.rounds, args.steps))
        if "path" not in args.skip:
            table("(b) whole training path, one epoch", whole_path(parts, args.batch_size, args.workers, args.rounds))
        if {"startup", "process"} - set(args.skip):
            cmds = startup_commands(parts, root)
        if "startup" not in args.skip:
            s = timed_processes(cmds, root, args.startup_rounds or args.rounds)
            print(f"\n(c) fresh process to one trained step: omnimodal {s['omnimodal']:.1f} s, plain {s['plain']:.1f} s, "
                  f"ratio {s['plain'] / s['omnimodal']:.2f}x (plain / omnimodal wall; > 1: omnimodal starts faster; "
                  f"{paired_text(s['paired'])})")
        if "process" not in args.skip:
            s = timed_processes(epoch_commands(parts, root, cmds, args.batch_size, args.workers), root, args.process_rounds or args.rounds)
            print(f"\n(d) fresh process, one epoch ({conversations} conversations): omnimodal {s['omnimodal']:.1f} s, "
                  f"plain {s['plain']:.1f} s, ratio {s['plain'] / s['omnimodal']:.2f}x (plain / omnimodal wall; {paired_text(s['paired'])})")


if __name__ == "__main__":
    main()
