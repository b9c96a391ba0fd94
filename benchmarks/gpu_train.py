"""Training on one GPU: a ~0.5B decoder with a ViT in bf16, packing on; tokens/s, MFU, torch.compile.

    python benchmarks/gpu_train.py [--steps 20] [--warmup 8] [--batch-size 32] [--max-length 2048]
    python benchmarks/gpu_train.py --tiny      # the same code path on a CPU in a minute (no figures to read)

Everything is built here, offline, in a temporary directory: a byte-level BPE tokenizer trained on
the benchmark's text, a decoder of Qwen2-0.5B's shape (24 layers, width 896, 14 query and 2 key/value
heads, MLP 4864, vocabulary 151,936, tied embeddings: 494M parameters) from a config, saved with
``save_pretrained`` and loaded back by path (``decoder.kind: pretrained``), and a CLIP ViT-B/16 tower
at 224 px (86M, frozen; LLaVA's second stage: projector and decoder train), also saved and loaded by
path. The data: conversations with 0-2 images (196 pseudo-tokens each) and answers of 1-300 words.

Each configuration trains through ``omnimodal``'s own Lightning module and data module (its dataset,
collator, packing collator, sampler; AdamW, bf16-mixed, gradient clipping 1.0), from the same saved
weights, one after the other in this process. After ``--warmup`` steps (CUDA start, cuBLAS and
compile warm-up), ``--steps`` optimizer steps are timed (synchronised at both ends). Columns:

- tokens/s: non-pad tokens (text and image pseudo-tokens) per second; padding: pad share of the rows;
- model TFLOP/s and MFU: the useful work per second, counted from the batches (not the kernels):
  decoder and projector 6 x parameters x tokens (the LM head included, the embedding lookup not),
  causal attention 6 x layers x width x sum of squared conversation lengths (each conversation
  attends only to itself, also when packed), the frozen tower's forward 2 x parameters x patches
  plus its attention; MFU against 989 TFLOP/s (the H200's dense bf16 peak by the datasheet) and,
  beside it, against the bf16 matmul rate measured on this GPU first (8192^3 products);
- warm-up: wall seconds of the warm-up steps (torch.compile's compilation lands there);
- peak memory: ``torch.cuda.max_memory_allocated``; graphs: torch.compile graphs made.

Configurations (``--configs``, comma-separated; all by default, the two compiled ones take minutes
each): ``packing`` (flex attention, the CUDA default), ``packing-mask`` (the dense 4-D mask through
SDPA), ``padding``, ``grouping``, ``packing+compile``, ``packing-mask+compile``. ``--profile`` adds
a torch.profiler table of the timed steps' kernels. Ratios are to the first configuration run.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16, datasheet
WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "su", "ti", "va", "ze", "bo", "da")
         for b in ("n", "r", "s", "t", "l", "m", "x", "k", "ng", "ph", "st", "")]


def make_data(root: Path, n: int, image_size: int, seed: int = 0) -> Path:
    """``n`` conversations: 0-2 images, a question of 4-30 words, an answer of 1-300 words."""
    from PIL import Image, ImageDraw

    from omnimodal.demo import write_jsonl

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        parts: list[dict[str, Any]] = []
        for j in range(rng.choice((0, 1, 1, 2))):
            image = Image.new("RGB", (image_size, image_size), tuple(rng.randrange(60) for _ in range(3)))
            draw = ImageDraw.Draw(image)
            for _ in range(rng.randint(1, 4)):
                x, y, r = rng.randrange(image_size), rng.randrange(image_size), rng.randint(4, image_size // 4)
                draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.randrange(256) for _ in range(3)))
            rel = f"images/{i}_{j}.png"
            image.save(root / rel)
            parts.append({"type": "image", "path": rel})
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))) + "?"
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 300))) + "."
        records.append({"messages": [
            {"role": "user", "content": [*parts, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})
    return write_jsonl(root / "train.jsonl", records)


def build_parts(root: Path, train: Path, tiny: bool) -> dict[str, Any]:
    """Save the tokenizer + decoder and the CLIP tower under ``root``; return the model config."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from omnimodal.data.dataset import training_texts
    from omnimodal.data.formats import ReadContext, open_split
    from omnimodal.decoder import train_bpe_tokenizer

    records = open_split([train], {}, ReadContext.for_part_types({"image": "vision"}))
    tokenizer = train_bpe_tokenizer(training_texts(records), vocab_size=600 if tiny else 4000)
    dims = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=2048)
            if tiny else
            dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936))
    torch.manual_seed(0)
    decoder = Qwen2ForCausalLM(Qwen2Config(**dims, tie_word_embeddings=True, max_position_embeddings=4096, rope_theta=1e6,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None))
    decoder.save_pretrained(root / "decoder")
    tokenizer.save_pretrained(root / "decoder")
    del decoder
    size = 32 if tiny else 224
    vit = (dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2) if tiny else
           dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12))
    CLIPVisionModel(CLIPVisionConfig(**vit, image_size=size, patch_size=16)).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(root / "clip")
    return {
        "decoder": {"kind": "pretrained", "path": str(root / "decoder"), "dtype": "float32"},
        "modalities": {"vision": {"encoder": {"kind": "hf", "path": str(root / "clip"), "feature_layer": -2, "features": "patch"},
                                  "projector": {"kind": "mlp", "hidden_dim": None}, "train_encoder": False}},
    }


def flop_counts(model) -> dict[str, float]:
    """Parameter counts the FLOP model needs (matmul parameters: no embedding lookup, no norms)."""
    dec = model.decoder
    cfg = dec.config
    layers = sum(p.numel() for n, p in dec.named_parameters() if ".layers." in n and p.dim() == 2)
    head = dec.get_output_embeddings().weight.numel()
    tower = model.encoders["vision"]
    vit_cfg = next(m.config for m in tower.modules() if hasattr(m, "config") and hasattr(m.config, "patch_size"))
    return {
        "decoder": layers + head,
        "projector": sum(p.numel() for p in model.projectors["vision"].parameters() if p.dim() == 2),
        "width": cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads),
        "layers": cfg.num_hidden_layers,
        "tower": sum(p.numel() for p in tower.parameters() if p.dim() == 2),
        "tower_width": vit_cfg.hidden_size, "tower_layers": vit_cfg.num_hidden_layers,
        "patches": (vit_cfg.image_size // vit_cfg.patch_size) ** 2 + 1,
    }


def run_config(name: str, model_cfg: dict, train: Path, args, data: dict, compile_opts: Any) -> dict[str, Any]:
    import lightning as L

    from omnimodal.model import OmniModel
    from omnimodal.training.datamodule import OmniDataModule
    from omnimodal.training.module import OmniLightningModule

    torch.manual_seed(0)
    model = OmniModel.from_config(model_cfg)
    counts = flop_counts(model)
    cuda = torch.cuda.is_available()
    dm = OmniDataModule({"batch_size": args.batch_size, "num_workers": args.workers, "max_length": args.max_length, "seed": 0, **data},
                        {"train": [train], "val": [], "test": []}, model.tokenizer, model.modalities, model.placeholder_ids)
    stage = {"lr": 1e-5, "warmup_ratio": 0.0, "weight_decay": 0.0, "train_encoders": False, "train_projectors": True, "train_decoder": True}
    module = OmniLightningModule(model, stage, {"vision": {"train_encoder": False}}, compile=compile_opts)

    class Meter(L.Callback):
        """Counts on the device (no host sync per step); times the steps after the warm-up."""

        def __init__(self):
            self.step = 0
            self.t_start = time.perf_counter()
            self.sums = None
            self.images = self.conversations = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.step == args.warmup:
                if cuda:
                    torch.cuda.synchronize()
                self.t0 = time.perf_counter()
                self.warmup_s = self.t0 - self.t_start
                if args.profile:
                    self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
                    self.prof.__enter__()
            if self.step < args.warmup:
                return
            mask = batch["attention_mask"]
            if "segment_ids" in batch:  # packed: each conversation is one segment of a row
                seg = batch["segment_ids"]
                lengths = torch.zeros(seg.shape[0], seg.shape[1] + 1, device=seg.device).scatter_add_(1, seg, torch.ones_like(seg, dtype=torch.float))[:, 1:]
            else:
                lengths = mask.sum(1).float()
            step = torch.stack([mask.sum().float(), torch.tensor(float(mask.numel()), device=mask.device), (lengths**2).sum()])
            self.sums = step if self.sums is None else self.sums + step
            self.conversations += len(batch["sources"])
            vision = batch["media"].get("vision") or {}
            pixels = vision.get("pixel_values") if isinstance(vision, dict) else None
            self.images += int(pixels.shape[0]) if pixels is not None else 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.step += 1
            if self.step == args.warmup + args.steps:
                if cuda:
                    torch.cuda.synchronize()
                self.seconds = time.perf_counter() - self.t0
                if args.profile:
                    self.prof.__exit__(None, None, None)
                    events = self.prof.key_averages()
                    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
                    print(f"[{name}] GPU kernels busy {kernel_us / 1e6:.2f} s of {self.seconds:.2f} s wall (profiled)", flush=True)
                    print(events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60), flush=True)

    meter = Meter()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = L.Trainer(max_steps=args.warmup + args.steps, accelerator="gpu" if cuda else "cpu", devices=1,
                        precision=args.precision, gradient_clip_val=1.0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[meter])
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # "graphs": this configuration's compiled graphs only
    torch.backends.cuda.enable_cudnn_sdp(False)  # as `omnimodal train` does (omnimodal.train.no_cudnn_attention)
    trainer.fit(module, datamodule=dm)
    tokens, positions, sq = (float(x) for x in meter.sums.cpu())
    flops = (6 * (counts["decoder"] + counts["projector"]) * tokens
             + 6 * counts["layers"] * counts["width"] * sq
             + meter.images * (2 * counts["tower"] * counts["patches"] + 4 * counts["tower_layers"] * counts["tower_width"] * counts["patches"] ** 2))
    out = {"config": name, "steps": args.steps, "seconds": meter.seconds, "warmup_s": meter.warmup_s,
           "tokens_per_s": tokens / meter.seconds, "conversations_per_s": meter.conversations / meter.seconds,
           "padding": 1 - tokens / positions, "images": meter.images, "conversations": meter.conversations, "tokens": tokens, "tflops": flops / meter.seconds / 1e12,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
           "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"]}
    del trainer, module, model
    if cuda:
        torch.cuda.empty_cache()
    return out


def matmul_rate() -> float:
    """bf16 8192^3 matmul TFLOP/s on random data (mean of 10 after 3 warm-ups)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12


#: name -> (data overrides, decoder overrides, torch.compile the decoder)
CONFIGS = {
    "packing": ({"packing": True}, {"packed_attention": "flex"}, False),
    "packing-mask": ({"packing": True}, {"packed_attention": "mask"}, False),
    "padding": ({}, {}, False),
    "grouping": ({"group_by_length": True}, {}, False),
    "packing+compile": ({"packing": True}, {"packed_attention": "flex"}, True),
    "packing-mask+compile": ({"packing": True}, {"packed_attention": "mask"}, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {list(CONFIGS)}")
    parser.add_argument("--precision", default="bf16-mixed", help="Lightning's precision (bf16-mixed, bf16-true, 32-true)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler over the timed steps: top kernels, GPU busy time")
    parser.add_argument("--tiny", action="store_true", help="tiny model and images: checks the path on a CPU")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f"torch {torch.__version__}; device: {torch.cuda.get_device_name() if cuda else 'cpu'}", flush=True)
    measured = matmul_rate() if cuda else float("nan")
    if cuda:
        print(f"bf16 matmul 8192^3: {measured:.0f} TFLOP/s", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        n = (args.warmup + args.steps) * args.batch_size + args.batch_size
        train = make_data(root / "data", n, 32 if args.tiny else 224)
        model_cfg = build_parts(root / "parts", train, args.tiny)
        print(f"data ({n} conversations) and parts built in {time.perf_counter() - t:.0f} s", flush=True)
        for name in args.configs.split(","):
            data, decoder, compiled = CONFIGS[name]
            cfg = {**model_cfg, "decoder": {**model_cfg["decoder"], **decoder}}
            res = run_config(name, cfg, train, args, data, {} if compiled else False)
            res["mfu"] = res["tflops"] * 1e12 / PEAK_BF16
            res["of_matmul"] = res["tflops"] / measured if cuda else float("nan")
            results.append(res)
            print(f"{name:>16}: {res['tokens_per_s']:>9.0f} tokens/s  {res['conversations_per_s']:>7.1f} conv/s  padding {res['padding']:>5.1%}  "
                  f"{res['tflops']:>6.1f} TFLOP/s  MFU {res['mfu']:>5.1%} ({res['of_matmul']:.0%} of matmul)  warm-up {res['warmup_s']:>5.1f} s  "
                  f"peak {res['peak_gib']:.1f} GiB  graphs {res['graphs']}  ({res['conversations']} conversations, {res['images']} images, "
                  f"{res['tokens']:.0f} tokens in {res['seconds']:.1f} s)", flush=True)
    if results:
        base = results[0]
        for r in results:
            r["ratio"] = r["tokens_per_s"] / base["tokens_per_s"]
        print(f"tokens/s vs {base['config']}: " + ", ".join(f"{r['config']} {r['ratio']:.2f}x" for r in results), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"matmul_tflops": measured, "args": vars(args) | {"json": str(args.json)}, "results": results}, indent=1))
    if not math.isnan(measured):
        print(f"MFU is against {PEAK_BF16 / 1e12:.0f} TFLOP/s; this GPU's measured matmul rate: {measured:.0f}", flush=True)


if __name__ == "__main__":
    main()
