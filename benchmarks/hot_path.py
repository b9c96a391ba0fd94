"""Per-step cost of the splice and the gradient pass on ``compare.py``'s model (CLIP tower +
Llama decoder, batch 16), medians of many repetitions:

    python benchmarks/hot_path.py

- the splice alone (encoder and projector outputs given): by the placeholder mask (a batch
  without indices) vs by the collator's indices (the training path);
- collating 16 samples without vs with the count check and the splice indices (data worker);
- a pass over every trainable gradient (what token weighting cost every step before it moved
  into the loss when there is no gradient accumulation);
- one training step (forward + backward + AdamW), for scale.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    import compare

    from omnimodal.data.dataset import Collator, ConversationDataset
    from omnimodal.data.records import read_jsonl

    with tempfile.TemporaryDirectory(prefix="omnimodal-hot-path-") as tmp:
        parts = compare.build_parts(Path(tmp), 32, 224)
        compare.freeze_vision(parts["model"])
        model = parts["model"].train()
        recs = list(read_jsonl(parts["files"]["train"], {"image": "vision"}))[:16]
        ds = ConversationDataset(recs, model.tokenizer, model.modalities, model.placeholder_ids, 512)
        samples = [ds[i] for i in range(len(ds))]
        plain = Collator(model.modalities, model.tokenizer.pad_token_id)
        indexed = Collator(model.modalities, model.tokenizer.pad_token_id, placeholder_ids=model.placeholder_ids)
        by_mask, by_index = plain(samples), indexed(samples)

        with torch.no_grad():
            outputs = {name: model.encode_media(name, media) for name, media in by_index["media"].items()}
        model.encode_media = lambda name, media: outputs[name]  # time the splice alone
        t_mask = median_time(lambda: model.embed(by_mask["input_ids"], by_mask["media"]), 200)
        t_index = median_time(lambda: model.embed(by_index["input_ids"], by_index["media"], splice=by_index["splice"]), 200)
        del model.encode_media
        print(f"splice (embedding lookup included), batch 16: mask {t_mask * 1e3:.3f} ms, index {t_index * 1e3:.3f} ms")
        t_plain, t_indexed = median_time(lambda: plain(samples), 20), median_time(lambda: indexed(samples), 20)
        print(f"collate 16 samples: without indices {t_plain * 1e3:.2f} ms, with the count check and indices {t_indexed * 1e3:.2f} ms")

        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = torch.optim.AdamW(params, lr=1e-4)
        scale = torch.tensor(0.5)

        def gradient_pass():
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            torch._foreach_mul_(grads, scale)

        n_values = sum(p.numel() for p in params) / 1e6
        print(f"gradient pass over {len(params)} trainable tensors ({n_values:.1f}M values): {median_time(gradient_pass, 50) * 1e3:.2f} ms")

        def step():
            model(**by_index, loss_reduction="sum").loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        print(f"one training step (forward + backward + AdamW), batch 16: {median_time(step, 5) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
