"""Training throughput of the demo model: samples/s, tokens/s and peak memory.

    python benchmarks/train_throughput.py [--steps 60] [--batch-size 32] [--modalities vision]

Builds the default demo model (conf/ defaults) on the demo data, runs warm-up steps, then
times optimizer steps and prints figures side by side for each batch size asked for, with the
FLOP of a step (forward + backward, as ``torch.utils.flop_counter`` counts them) and the rate
they ran at beside a decoder-shaped matmul's rate on this machine: how far a step is from
being bound by arithmetic.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--modalities", default="vision")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from omnimodal.builtin import core_config_dir
    from omnimodal.data.dataset import training_texts
    from omnimodal.data.records import SkipReport
    from omnimodal.model import OmniModel, build_modalities
    from omnimodal.train import register_search_path_plugin, resolve_files
    from omnimodal.training.datamodule import OmniDataModule, read_split
    from omnimodal.training.module import apply_stage, parameter_groups

    register_search_path_plugin()
    with initialize_config_dir(str(core_config_dir()), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", [f"modalities=[{args.modalities}]"]), resolve=True)
    files = resolve_files(cfg)
    part_types = {m.part_type: n for n, m in build_modalities(cfg["modalities"]).items()}
    records = read_split(files["train"], part_types, "raise", SkipReport())
    texts = list(training_texts(records))
    torch.manual_seed(0)
    model = OmniModel.from_config({"decoder": cfg["decoder"], "modalities": cfg["modalities"]}, texts=texts)
    apply_stage(model, cfg["stage"], cfg["modalities"])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters; modalities: {args.modalities}; torch threads: {torch.get_num_threads()}")
    print(f"{'batch':>6} {'steps':>6} {'samples/s':>10} {'tokens/s':>10} {'ms/step':>8} {'peak RSS MB':>12}  compute")
    for bs in args.batch_size:
        dm = OmniDataModule({**cfg["data"], "batch_size": bs, "num_workers": args.workers}, files, model.tokenizer, model.modalities, model.placeholder_ids)
        dm.setup("fit")
        opt = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-4)
        model.train()
        it = iter(dm.train_dataloader())
        samples = tokens = 0
        t0 = 0.0
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                samples = tokens = 0
                t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                it = iter(dm.train_dataloader())
                batch = next(it)
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            samples += batch["input_ids"].shape[0]
            tokens += int(batch["attention_mask"].sum())
        dt = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        flop = step_flop(model, dm, steps=5)
        print(f"{bs:>6} {args.steps:>6} {samples / dt:>10.1f} {tokens / dt:>10.0f} {1000 * dt / args.steps:>8.1f} {rss:>12.0f}"
              f"  {flop / 1e9:.1f} GFLOP/step, {flop * args.steps / dt / 1e9:.0f} GFLOP/s")
    peak = matmul_peak(model.decoder.config.hidden_size, model.decoder.config.intermediate_size)
    print(f"this CPU's fp32 matmul rate at {torch.get_num_threads()} threads (decoder-shaped, [1152, {model.decoder.config.hidden_size}] x "
          f"[{model.decoder.config.hidden_size}, {model.decoder.config.intermediate_size}]): {peak / 1e9:.0f} GFLOP/s")


def step_flop(model, dm, steps: int) -> float:
    """Mean forward+backward FLOP of a training step (matmuls, convolutions, attention: what
    ``torch.utils.flop_counter`` counts; norms and elementwise ops are left out)."""
    from torch.utils.flop_counter import FlopCounterMode

    total = 0
    it = iter(dm.train_dataloader())
    for _ in range(steps):
        with FlopCounterMode(display=False) as counter:
            model(**next(it)).loss.backward()
        total += counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    return total / steps


def matmul_peak(hidden: int, inner: int, rows: int = 1152, seconds: float = 1.0) -> float:
    """FLOP/s of a float32 matmul shaped like the decoder's MLP on a 32 x 36-token batch."""
    a, b = torch.randn(rows, hidden), torch.randn(hidden, inner)
    for _ in range(5):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * rows * hidden * inner * n / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
