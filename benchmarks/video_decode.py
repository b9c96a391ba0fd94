"""Video decoding: seeking to the sampled frames vs decoding every frame.

Writes (once, under --dir) a clip that makes seeking matter: 640x360, textured content moving
every frame, 60 s at 30 fps (1800 frames), H.264 with a keyframe every 250 frames
(``g=250``, ``sc_threshold=0``: no extra keyframes on scene cuts). Then times, for 32 (and 8)
frames sampled uniformly (the plugin's own indices):

- ``metadata``: frame count, rate and size from the header (what token counts need);
- ``seek``: the plugin's ``read_frames``: seek to the keyframe before a wanted frame unless the
  decoder already stands in that frame's GOP, then decode forward to it;
- ``seek each``: a seek to the keyframe before every wanted frame, independently (the naive way);
- ``decode all``: decode every frame and keep the sampled ones (what LLaMA-Factory does).

    python benchmarks/video_decode.py [--frames 32,8] [--repeats 3] [--dir /tmp/omnimodal-video-bench]

All paths must give identical pixels; the script checks it. A frame of an H.264 GOP made of P
frames needs every frame since its keyframe, so with several wanted frames per GOP no method can
skip more than each GOP's tail after its last wanted frame.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

WIDTH, HEIGHT, FPS, SECONDS, GOP = 640, 360, 30, 60, 250


def make_clip(path: Path) -> Path:
    """Write the benchmark clip (deterministic): a scrolling noise texture with a moving bright bar."""
    import av

    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (HEIGHT * 2, WIDTH * 2, 3), dtype=np.uint8)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"g": str(GOP), "sc_threshold": "0", "preset": "veryfast", "crf": "23"}
        for t in range(FPS * SECONDS):
            dy, dx = (3 * t) % HEIGHT, (5 * t) % WIDTH
            frame = texture[dy : dy + HEIGHT, dx : dx + WIDTH].copy()
            bar = (7 * t) % WIDTH
            frame[:, bar : bar + 20] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


def decode_all_keep(path: Path, indices: list[int]) -> np.ndarray:
    """Decode every frame in order; convert and keep only the sampled ones."""
    import av
    from omnimodal_video.decode import to_rgb

    wanted = set(indices)
    kept = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept[i] = to_rgb(frame)
    return np.stack([kept[i] for i in indices])


def seek_each(path: Path, indices: list[int]) -> np.ndarray:
    """Seek to the keyframe before every wanted frame and decode forward to it, frame by frame."""
    import av
    from omnimodal_video.decode import to_rgb

    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        pts = sorted(p.pts for p in container.demux(stream) if p.size and p.pts is not None)
        for i in indices:
            container.seek(pts[i], stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts >= pts[i]:
                    out.append(to_rgb(frame))
                    break
    return np.stack(out)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    import os

    from omnimodal_video.decode import probe, read_frames
    from omnimodal_video.sampling import Sampling, sample_indices

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="32,8", help="comma-separated sampled-frame counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/omnimodal-video-bench")
    args = parser.parse_args()

    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    path = make_clip(directory / f"textured_{WIDTH}x{HEIGHT}_{SECONDS}s_{FPS}fps_g{GOP}.mp4")
    print(f"clip: {path} ({path.stat().st_size / 1e6:.1f} MB, ready in {time.perf_counter() - start:.1f} s); load average {os.getloadavg()[0]:.1f}")
    t_meta, info = timed(lambda: probe(path), args.repeats)
    print(f"{info.num_frames} frames at {info.fps:g} fps, {info.width}x{info.height}; metadata in {t_meta * 1000:.0f} ms")
    print(f"\n{'frames':>6} {'seek s':>8} {'seek each s':>12} {'decode all s':>13} {'all / seek':>11}   (median of {args.repeats})")
    for n in (int(x) for x in args.frames.split(",")):
        indices = sample_indices(info.num_frames, info.fps, Sampling(num_frames=n, max_frames=None))
        t_seek, (frames, decoded) = timed(lambda indices=indices: read_frames(path, indices), args.repeats)
        t_each, each = timed(lambda indices=indices: seek_each(path, indices), args.repeats)
        t_all, every = timed(lambda indices=indices: decode_all_keep(path, indices), args.repeats)
        if decoded != len(set(indices)) or not (np.array_equal(frames, every) and np.array_equal(each, every)):
            raise SystemExit(f"{n} frames: the methods gave different frames")
        print(f"{n:>6} {t_seek:>8.2f} {t_each:>12.2f} {t_all:>13.2f} {t_all / t_seek:>10.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
