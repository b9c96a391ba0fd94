"""Generation speed: the pipeline against the bare decoder, batched against one by one, and the server.

    python benchmarks/generation.py [--new-tokens 32] [--width 192] [--layers 4] [--device cpu]

All figures come from one run, side by side:

1. tokens/s of ``Pipeline.chat`` (prepare the image and text, encode, project, splice, generate)
   against the decoder's own ``generate`` on the same, precomputed input embeddings
   (target ratio >= 0.95);
2. tokens/s of ``Pipeline.generate`` on a batch against the same conversations one by one;
3. ``omnimodal serve`` on 127.0.0.1 (a subprocess) at 1, 4 and 16 concurrent clients:
   requests/s, tokens/s, p50 and p95 latency, with the server batching queued requests and
   with batching off (``--max-batch-size 1``).

Weights are random (speed does not depend on them); answers are forced to ``--new-tokens``
tokens (``ignore_eos``) wherever the API allows it.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


def build_model(root: Path, width: int, layers: int):
    """A random demo-sized model on the coloured-shapes demo data; returns (model, image paths, questions)."""
    from omnimodal_vision.demo import build

    from omnimodal.data.dataset import question_text, training_texts
    from omnimodal.data.records import read_jsonl
    from omnimodal.model import OmniModel

    files = build(root / "demo", seed=0, sizes={"train": 64, "val": 4, "test": 32})
    records = read_jsonl(files["train"], {"image": "vision"})
    texts = list(training_texts(records))  # every turn of the demo's multi-turn training records
    decoder = {"kind": "scratch", "architecture": "llama", "hidden_size": width, "intermediate_size": 4 * width,
               "num_hidden_layers": layers, "num_attention_heads": max(1, width // 32), "num_key_value_heads": max(1, width // 32),
               "max_position_embeddings": 512, "tokenizer": {"kind": "bpe", "vocab_size": 600}}
    vision = {"encoder": {"kind": "vit", "patch_size": 16, "width": 128, "depth": 2, "heads": 4, "features": "patch"},
              "projector": {"kind": "mlp"}, "image_size": 64, "resize": "squash"}
    torch.manual_seed(0)
    model = OmniModel.from_config({"decoder": decoder, "modalities": {"vision": vision}}, texts=texts)
    test = read_jsonl(files["test"], {"image": "vision"})
    images = [r.base_dir / r.media_parts()[0]["path"] for r in test]
    questions = [question_text(r) for r in test]
    return model, images, questions


def conversation(image: Path, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": question}]}]


def timed(fn, repeats: int) -> float:
    """Best (least disturbed) seconds of ``repeats`` calls, after one warm-up: robust on a shared machine."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_pipeline(pipe, images, questions, n: int, repeats: int) -> list[tuple[str, float, float]]:
    """(label, pipeline tok/s, reference tok/s) rows."""
    rows = []
    model = pipe.model
    for bs in (1, 8):
        convs = [conversation(images[i], questions[i]) for i in range(bs)]

        def run_pipeline(convs=convs):
            pipe.generate(convs, max_new_tokens=n, ignore_eos=True, batch_size=len(convs))

        prompts = [pipe.prepare(c) for c in convs]
        batch = pipe.collate(prompts)
        with torch.no_grad():
            embeds = model.embed(batch["input_ids"], batch["media"])

        def run_decoder(embeds=embeds, mask=batch["attention_mask"]):
            with torch.no_grad():
                model.decoder.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                       pad_token_id=pipe.tokenizer.pad_token_id, eos_token_id=pipe.tokenizer.eos_token_id)

        # Interleave the two so drift on a shared machine hits both alike; keep the best of each.
        t_pipe, t_dec = [], []
        for _ in range(repeats):
            t_pipe.append(timed(run_pipeline, 1))
            t_dec.append(timed(run_decoder, 1))
        tokens = bs * n
        rows.append((f"batch {bs}", tokens / min(t_pipe), tokens / min(t_dec)))
    return rows


def bench_batching(pipe, images, questions, n: int, count: int, repeats: int) -> tuple[float, float]:
    convs = [conversation(images[i % len(images)], questions[i % len(questions)]) for i in range(count)]
    t_batch = timed(lambda: pipe.generate(convs, max_new_tokens=n, ignore_eos=True, batch_size=count), repeats)
    t_single = timed(lambda: [pipe.generate([c], max_new_tokens=n, ignore_eos=True) for c in convs], max(1, repeats // 2))
    return count * n / t_batch, count * n / t_single


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_server(model_dir: Path, images, questions, n: int, clients: list[int], per_client: int, max_batch: int, device: str) -> list[dict]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "omnimodal.cli", "serve", "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
           "--max-batch-size", str(max_batch), "--max-tokens", str(n), "--log-level", "warning", "--device", device]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in 120 s")
            time.sleep(0.2)
        bodies = []
        for i in range(len(images)):
            url = "data:image/png;base64," + base64.b64encode(Path(images[i]).read_bytes()).decode()
            bodies.append({"model": model_dir.name, "max_tokens": n, "temperature": 0,
                           "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                                     {"type": "text", "text": questions[i]}]}]})
        http = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=64))

        def one(i: int) -> tuple[float, int]:
            t = time.perf_counter()
            r = http.post(f"{base}/v1/chat/completions", json=bodies[i % len(bodies)])
            r.raise_for_status()
            return time.perf_counter() - t, r.json()["usage"]["completion_tokens"]

        one(0)  # warm-up
        rows = []
        for c in clients:
            total = c * per_client
            t0 = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                results = list(pool.map(one, range(total)))
            wall = time.perf_counter() - t0
            lat = sorted(r[0] for r in results)
            rows.append({"clients": c, "requests": total, "req/s": total / wall, "tok/s": sum(r[1] for r in results) / wall,
                         "p50": lat[len(lat) // 2], "p95": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]})
        http.close()
        return rows
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads here and in the server")
    parser.add_argument("--batch", type=int, default=16, help="conversations in the batched-vs-one-by-one test")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--per-client", type=int, default=4, help="requests each client sends")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-server", action="store_true")
    args = parser.parse_args()

    from omnimodal.inference import Pipeline

    torch.set_num_threads(args.threads)
    n = args.new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, images, questions = build_model(root, args.width, args.layers)
        model.save_pretrained(root / "bench-model")
        pipe = Pipeline(model, device=args.device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        prompt = pipe.prepare(conversation(images[0], questions[0])).num_tokens
        print(f"model: {params:.2f}M parameters (decoder width {args.width}, {args.layers} layers), prompt {prompt} tokens "
              f"(16 image pseudo-tokens), {n} new tokens; device {args.device}; torch threads {torch.get_num_threads()}")

        print(f"\n1. pipeline vs decoder.generate on the same input embeddings (greedy; best of {args.repeats}, interleaved)")
        print(f"{'':<10} {'pipeline tok/s':>15} {'decoder tok/s':>14} {'ratio':>7}")
        for label, p, d in bench_pipeline(pipe, images, questions, n, args.repeats):
            print(f"{label:<10} {p:>15.1f} {d:>14.1f} {p / d:>7.3f}")

        print(f"\n2. {args.batch} conversations: one batch vs one by one (pipeline)")
        batched, single = bench_batching(pipe, images, questions, n, args.batch, max(2, args.repeats // 3))
        print(f"{'batched tok/s':>14} {'one-by-one tok/s':>17} {'speed-up':>9}")
        print(f"{batched:>14.1f} {single:>17.1f} {batched / single:>9.2f}x")

        if not args.no_server:
            print(f"\n3. server on 127.0.0.1, {args.per_client} requests per client, image + question, max_tokens {n}")
            print(f"{'batching':<9} {'clients':>7} {'requests':>8} {'req/s':>7} {'tok/s':>8} {'p50 s':>7} {'p95 s':>7}")
            for max_batch in (8, 1):
                for row in bench_server(root / "bench-model", images, questions, n, args.clients, args.per_client, max_batch, args.device):
                    print(f"{'on (8)' if max_batch > 1 else 'off':<9} {row['clients']:>7} {row['requests']:>8} {row['req/s']:>7.2f} "
                          f"{row['tok/s']:>8.1f} {row['p50']:>7.3f} {row['p95']:>7.3f}")


if __name__ == "__main__":
    main()
