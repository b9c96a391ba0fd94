"""Feature cache: step time with a cold cache (every item encoded) vs a warm one (read from disk).

    python benchmarks/feature_cache.py                       # CLIP tower from a config, 224 px, 12 layers
    python benchmarks/feature_cache.py --tower demo          # the demo's tiny ViT
    python benchmarks/feature_cache.py --width 768 --patch 16 --batch-size 32 --items 256   # ViT-B/16-sized, GPU

Stage ``align`` (encoder frozen, projector trains). The same batches (``--items`` images of the
vision demo set) run ``--rounds`` times ``--steps`` pairs of one cold and one warm step,
alternating step by step (after one cold pass that warms up and fills the cache). A cold step sees an empty snapshot (every item misses: encoder forward, entry
buffered); a warm step sees the filled cache (entries read and checksummed, no encoder call).
Each step is the whole training step: resolve the cache, move to the device, forward, backward,
optimizer step. The encoder's own time in cold steps is timed with forward hooks.

Prints the medians, the share of encoder time removed, ``(t_cold - t_warm) / t_encoder``
(target >= 0.8), the tower's size (what ``feature_cache_mode=require`` keeps off the device) and
disk use per 1k items from the measured shard size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _save_clip(root: Path, args) -> Path:
    import transformers

    cfg = transformers.CLIPVisionConfig(hidden_size=args.width, intermediate_size=4 * args.width, num_hidden_layers=args.layers,
                                        num_attention_heads=max(1, args.width // 64), image_size=args.image_size, patch_size=args.patch)
    torch.manual_seed(0)
    transformers.CLIPVisionModel(cfg).save_pretrained(root)
    size = {"shortest_edge": args.image_size}
    transformers.CLIPImageProcessor(size=size, crop_size={"height": args.image_size, "width": args.image_size}).save_pretrained(root)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tower", choices=["clip", "demo"], default="clip")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--items", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default=None, help="data.feature_cache_dtype (default: as the encoder gives)")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on a GPU, 32-true on the CPU")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    import omnimodal
    from omnimodal.data import feature_cache as fc
    from omnimodal.data.dataset import training_texts
    from omnimodal.model import build_modalities, build_tokenizer
    from omnimodal.train import resolve_files
    from omnimodal.training.datamodule import OmniDataModule
    from omnimodal.training.module import apply_stage, parameter_groups

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision = args.precision or ("bf16-mixed" if cuda else "32-true")
    with tempfile.TemporaryDirectory(prefix="omnimodal-fc-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        overrides = ["modalities=[vision]", "stage=align", f"data.feature_cache={tmp / 'cache'}", f"trainer.precision={precision}",
                     f"trainer.accelerator={'gpu' if cuda else 'cpu'}", "data.num_workers=0", f"data.batch_size={args.batch_size}"]
        if args.dtype:
            overrides.append(f"data.feature_cache_dtype={args.dtype}")
        if args.tower == "clip":
            overrides += ["vision/encoder@modalities.vision.encoder=clip", f"modalities.vision.encoder.path={_save_clip(tmp / 'clip', args)}"]
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(omnimodal.compose(overrides), resolve=True)
        files = resolve_files(cfg)
        modalities = build_modalities(cfg["modalities"])
        setup = fc.plan(cfg, modalities)
        from omnimodal.data.formats import ReadContext, open_split

        records = open_split(files["train"], cfg["data"], ReadContext.for_part_types({m.part_type: n for n, m in modalities.items()}))
        tokenizer = build_tokenizer(cfg["decoder"], training_texts(records))
        torch.manual_seed(0)
        model = setup.build({"decoder": cfg["decoder"], "modalities": cfg["modalities"]}, tokenizer, modalities)
        apply_stage(model, cfg["stage"], cfg["modalities"])
        model.to(device)
        opt = torch.optim.AdamW(parameter_groups(model, 0.0), lr=1e-4)
        dm = OmniDataModule({**cfg["data"], "seed": 0}, files, tokenizer, modalities, model.placeholder_ids)
        dm.feature_cache = setup
        dm.setup("fit")
        batches = []
        for batch in dm._loader(dm.train_set, args.batch_size, shuffle=False):
            batches.append(batch)
            if len(batches) * args.batch_size >= args.items:
                break
        n_items = sum(len(b["media"]["vision"][fc.CACHE_KEY]["keys"]) for b in batches)

        encoder = model.encoders["vision"]
        enc_times: list[float] = []
        resolve_times: list[float] = []
        marks: dict[str, float] = {}

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize()

        def before(*_) -> None:
            sync()
            marks["t"] = time.perf_counter()

        def after(*_) -> None:
            sync()
            enc_times.append(time.perf_counter() - marks["t"])

        encoder.register_forward_pre_hook(before)
        encoder.register_forward_hook(after)
        autocast = fc._numerics_context(precision, device.type)
        store = setup.store

        def fresh(batch):
            info = batch["media"]["vision"][fc.CACHE_KEY]
            media = {"vision": {fc.CACHE_KEY: {**info, "items": list(info["items"]), "resolved": False}}}
            return {**batch, "media": media}

        def step(batch) -> float:
            sync()
            t0 = time.perf_counter()
            b = fresh(batch)
            t_r = time.perf_counter()
            fc.resolve_batch(b, setup.caches)
            resolve_times.append(time.perf_counter() - t_r)
            b = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
            b["media"] = fc._to(b["media"], device)
            with autocast:
                out = model(**b)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            return time.perf_counter() - t0

        model.train()
        store.snapshot(0)
        for b in batches:  # warm-up (kernels, allocator) and the fill: every batch once, cold
            step(b)
        store.flush()
        filled = time.time_ns()
        cold, warm, enc, warm_resolve = [], [], [], []
        for _ in range(args.rounds):  # cold and warm steps alternate, on the same batches
            for i in range(args.steps):
                batch = batches[i % len(batches)]
                store.snapshot(0)  # nothing committed before time 0: every item misses
                store.written.clear()
                store.pending.clear()
                n_before = len(enc_times)
                cold.append(step(batch))
                enc.append(sum(enc_times[n_before:]))
                store.snapshot(filled)
                n_before = len(enc_times)
                warm.append(step(batch))
                warm_resolve.append(resolve_times[-1])
                assert len(enc_times) == n_before, "a warm step ran the encoder"
        shards = store.shard_files()
        disk = sum(p.stat().st_size for p in shards)
        entries = sum(1 for _ in store.index)
        per_item = disk / max(1, store.report.written)
        t_cold, t_warm, t_enc = statistics.median(cold), statistics.median(warm), statistics.median(enc)
        tower = sum(p.numel() * p.element_size() for p in encoder.parameters())
        figures = {
            "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
            "tower": args.tower, "precision": precision, "cache_dtype": args.dtype, "batch_size": args.batch_size,
            "items": n_items, "steps": args.steps, "rounds": args.rounds,
            "t_cold_ms": 1e3 * t_cold, "t_warm_ms": 1e3 * t_warm, "t_encoder_cold_ms": 1e3 * t_enc,
            "t_cache_read_warm_ms": 1e3 * statistics.median(warm_resolve),
            "encoder_share_removed": (t_cold - t_warm) / t_enc if t_enc else float("nan"),
            "speedup": t_cold / t_warm, "tower_mib": tower / 2**20, "entries": entries,
            "disk_bytes_per_item": per_item, "disk_mib_per_1k_items": per_item * 1000 / 2**20,
        }
        print(f"{figures['device']}, tower {args.tower}, {precision}, {n_items} items, batch {args.batch_size}, "
              f"{args.rounds} rounds x ({args.steps} cold + {args.steps} warm) steps")
        print(f"median step: cold {figures['t_cold_ms']:.1f} ms (encoder {figures['t_encoder_cold_ms']:.1f} ms), warm {figures['t_warm_ms']:.1f} ms "
              f"(of which cache reads {figures['t_cache_read_warm_ms']:.1f} ms) -> {figures['speedup']:.2f}x; encoder time removed: {figures['encoder_share_removed']:.2f} (target >= 0.8)")
        print(f"tower kept off the device by feature_cache_mode=require: {figures['tower_mib']:.1f} MiB; "
              f"disk: {per_item / 1024:.1f} KiB per item = {figures['disk_mib_per_1k_items']:.1f} MiB per 1k items")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
