"""Memory of reading data lazily: summed PSS of `omnimodal train` and its data workers.

    python benchmarks/data_memory.py [--sizes 10000 200000] [--format llava]

For each size, writes that many records with distinct texts (the same 8 images) in the given
format (``llava``: one compact JSON array, ``omnimodal``: JSONL), runs
``omnimodal train modalities=[vision] trainer.max_steps=1`` (scratch decoder: its tokenizer is
trained on the data, the blind baseline counts its answers) and samples the proportional set
size (PSS) of the main process plus every child (the data workers) every 50 ms, indexing
included. Prints the peak for each size and the growth between the first and the last, for
the whole PSS and for its anonymous part (heap: where records, indexes and counts live). The
file-backed part (torch's and the other libraries' code) is shared with every process on the
machine that maps the same files, so it moves with whatever else runs; the anonymous part
does not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [
    "red", "blue", "green", "yellow", "small", "large", "round", "square", "left", "right", "top", "bottom",
    "shape", "circle", "triangle", "near", "far", "bright", "dark", "centre", "corner", "edge", "first", "second",
    "picture", "image", "object", "pattern", "colour", "outline", "filled", "empty",
]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def question(i: int) -> str:
    """A distinct question for every i (i written in base-32 words), from a bounded vocabulary."""
    words = []
    while True:
        i, r = divmod(i, len(WORDS))
        words.append(WORDS[r])
        if i == 0:
            break
    return f"What colour is the {' '.join(words)} shape?"


def write_data(root: Path, n: int, fmt: str) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    for k, colour in enumerate(COLOURS):
        Image.new("RGB", (64, 64), colour).save(root / "images" / f"{k}.png")

    def record(i: int) -> dict:
        k = i % len(COLOURS)
        if fmt == "llava":
            return {"id": str(i), "image": f"images/{k}.png",
                    "conversations": [{"from": "human", "value": "<image>\n" + question(i)}, {"from": "gpt", "value": COLOURS[k]}]}
        return {"messages": [{"role": "user", "content": [{"type": "image", "path": f"images/{k}.png"}, {"type": "text", "text": question(i)}]},
                             {"role": "assistant", "content": [{"type": "text", "text": COLOURS[k]}]}]}

    if fmt == "llava":
        path = root / "train.json"
        with path.open("w") as f:
            f.write("[")
            for i in range(n):
                f.write(("," if i else "") + json.dumps(record(i)))
            f.write("]")
    else:
        path = root / "train.jsonl"
        with path.open("w") as f:
            for i in range(n):
                f.write(json.dumps(record(i)) + "\n")
    return path


def pss_kb(pid: int) -> tuple[int, int]:
    """(PSS, anonymous PSS) of one process in kB; zeros once it has gone."""
    pss = anon = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Pss_Anon:"):
                    anon = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return pss, anon


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def measure(data: Path, run_dir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "omnimodal.cli", "train", "modalities=[vision]", f"data.train={data}",
           "trainer.max_steps=1", "evaluate=false", "save_model=false", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={run_dir}", *extra]
    t0 = time.time()
    log = (run_dir.parent / f"{run_dir.name}.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    peak = peak_anon = peak_main = peak_procs = 0
    while proc.poll() is None:
        pids = tree(proc.pid)
        sizes = [pss_kb(p) for p in pids]
        total, anon = sum(s for s, _ in sizes), sum(a for _, a in sizes)
        if total > peak:
            peak, peak_main, peak_procs = total, sizes[0][0], len(pids)
        peak_anon = max(peak_anon, anon)
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"train failed (rc {proc.returncode}); see {log.name}")
    return {"peak_mb": peak / 1024, "anon_mb": peak_anon / 1024, "main_mb": peak_main / 1024, "procs": peak_procs, "seconds": time.time() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--format", choices=["llava", "omnimodal"], default="llava")
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and logs here (default: a temp dir, removed at the end)")
    parser.add_argument("overrides", nargs="*", help="extra `omnimodal train` overrides")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="omnimodal-data-memory-"))
    try:
        rows = []
        for n in args.sizes:
            data = write_data(work / f"{args.format}-{n}", n, args.format)
            r = measure(data, work / f"run-{args.format}-{n}", args.overrides)
            rows.append((n, data.stat().st_size / 2**20, r))
            print(f"{n:>8} records ({rows[-1][1]:6.1f} MiB {args.format}): peak PSS main + workers {r['peak_mb']:7.1f} MB "
                  f"(main {r['main_mb']:.1f} MB, {r['procs']} processes); peak anonymous PSS {r['anon_mb']:7.1f} MB; "
                  f"{r['seconds']:.0f} s", flush=True)
        if len(rows) > 1:
            first, last = rows[0][2], rows[-1][2]
            print(f"growth {rows[0][0]} -> {rows[-1][0]} records: PSS {last['peak_mb'] / first['peak_mb']:.3f}x, "
                  f"anonymous PSS {last['anon_mb'] / first['anon_mb']:.3f}x (target < 1.2x)")
    finally:
        if args.workdir is None:  # the generated records and run dirs: removed (--workdir keeps them)
            shutil.rmtree(work, ignore_errors=True)
    if args.workdir is not None:
        print(f"data and logs: {work}")


if __name__ == "__main__":
    main()
