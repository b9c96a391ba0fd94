"""Video decoding: clip metadata without pixels, and only the sampled frames, by seeking.

PyAV (FFmpeg in its wheels) is the default backend. :func:`probe` reads the header (frame count,
rate, size) and, where the header has no frame count (WebM/MKV), counts the video packets
without decoding them. :func:`read_frames` demuxes the packet index (timestamps and keyframes,
no decoding), then for each wanted frame seeks to the keyframe before it, unless the decoder
already stands between that keyframe and the frame, and decodes forward to it.

torchcodec is used only with ``backend: torchcodec`` and only when it loads (it needs a
system FFmpeg); :func:`torchcodec_status` says whether it does and why not.
"""

from __future__ import annotations

import bisect
import io
import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from omnimodal.errors import ConfigError, MediaError

BACKENDS = ("pyav", "torchcodec")
_local = threading.local()


def to_rgb(frame) -> np.ndarray:
    """A decoded frame as ``[H, W, 3]`` uint8 RGB through one reformatter per thread (a new
    swscale context per frame, as ``frame.to_ndarray(format="rgb24")`` makes, costs ~5 ms even
    for a 32x32 frame; reusing one, ~0.3 ms)."""
    import av

    if not hasattr(_local, "reformatter"):
        _local.reformatter = av.video.reformatter.VideoReformatter()
    return _local.reformatter.reformat(frame, format="rgb24").to_ndarray()


@dataclass(frozen=True)
class VideoInfo:
    """What a clip's metadata says, known before any pixel is decoded."""

    num_frames: int
    fps: float
    width: int
    height: int
    counted: bool = False  # True when the frame count came from counting packets

    @property
    def duration(self) -> float:
        """Seconds of video: ``num_frames / fps``."""
        return self.num_frames / self.fps


def _open(raw: Any, source: str):
    import av

    if isinstance(raw, (str, Path)):
        path = Path(raw)
        if not path.is_file():
            raise MediaError(f"{source}: video file not found: {path}")
        target: Any = str(path)
    elif isinstance(raw, (bytes, bytearray, memoryview)):
        if not len(raw):
            raise MediaError(f"{source}: empty video bytes")
        target = io.BytesIO(bytes(raw))
    else:
        raise MediaError(f"{source}: cannot read a video from {type(raw).__name__}")
    try:
        container = av.open(target, metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{source}: not a readable video ({type(exc).__name__}: {exc})") from exc
    if container.format.name.endswith("_pipe") or container.format.name == "image2":
        container.close()
        raise MediaError(f"{source}: this is a still image ({container.format.name}), not a video; use an image part")
    if not container.streams.video:
        kinds = ", ".join(s.type for s in container.streams) or "no streams"
        container.close()
        raise MediaError(f"{source}: the file has no video stream ({kinds})")
    return container


def _rate(stream, source: str) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0 or not math.isfinite(float(rate)):
        raise MediaError(f"{source}: the video stream gives no frame rate")
    return float(rate)


def _threads(stream) -> None:
    """Frame-threaded decoding for large frames only: for small ones the threads cost more than they save."""
    ctx = stream.codec_context
    if (ctx.width or 0) * (ctx.height or 0) >= 256 * 256:
        stream.thread_type = "AUTO"


class Clip:
    """An open video (path or bytes): :meth:`info` from its metadata, :meth:`read` for frames.

    One open serves both, so a data worker plans and decodes a clip with one container.
    """

    def __init__(self, raw: Any, source: str = "video"):
        self.source = source
        self.container = _open(raw, source)
        self.stream = self.container.streams.video[0]
        self._packets: list[tuple[int, bool]] | None = None
        self._info: VideoInfo | None = None

    def __enter__(self) -> Clip:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the container."""
        self.container.close()

    def packets(self) -> list[tuple[int, bool]]:
        """``(pts, is_keyframe)`` of every video packet, in file order: demuxed once, never decoded."""
        import av

        if self._packets is None:
            try:
                self._packets = [(p.pts, p.is_keyframe) for p in self.container.demux(self.stream) if p.size and p.pts is not None]
            except av.error.FFmpegError as exc:
                raise MediaError(f"{self.source}: cannot read the video's packets ({type(exc).__name__}: {exc})") from exc
        return self._packets

    def info(self) -> VideoInfo:
        """Frame count, rate and size without decoding pixels: the header's frame count or, where
        the header has none (WebM/MKV), the number of packets."""
        if self._info is None:
            stream = self.stream
            fps = _rate(stream, self.source)
            n, counted = int(stream.frames or 0), False
            if n <= 0:
                n, counted = len(self.packets()), True
            width, height = stream.codec_context.width, stream.codec_context.height
            if n <= 0:
                raise MediaError(f"{self.source}: the video has zero frames")
            if not width or not height:
                raise MediaError(f"{self.source}: the video stream has no frame size")
            self._info = VideoInfo(n, fps, int(width), int(height), counted)
        return self._info

    def read(self, indices: list[int]) -> tuple[np.ndarray, int]:
        """Decode the frames at ``indices`` (presentation order, 0-based) by seeking.

        Returns ``(frames [len(indices), H, W, 3] uint8, decoded)`` where ``decoded`` counts the
        distinct wanted frames that really decoded. Wanted frames past the end of what decodes
        (metadata that overstates the count, a truncated file) repeat the last decoded frame;
        the caller reports it. No decodable frame at all is an error naming the source.
        """
        import av

        container, stream = self.container, self.stream
        _threads(stream)
        packets = self.packets()
        pts = sorted(p for p, _ in packets)
        keys = sorted(p for p, k in packets if k) or pts[:1]
        got: dict[int, np.ndarray] = {}
        frames = None
        position = None  # pts of the last decoded frame
        try:
            for index in sorted(set(i for i in indices if 0 <= i < len(pts))):
                target = pts[index]
                key = keys[max(0, bisect.bisect_right(keys, target) - 1)]
                # Seek only when decoding forward cannot reach the frame within its own GOP.
                if frames is None or position is None or position >= target or position < key:
                    container.seek(key, stream=stream, backward=True)
                    frames = container.decode(stream)
                for frame in frames:
                    position = frame.pts if frame.pts is not None else position
                    if frame.pts is None or frame.pts >= target:
                        got[index] = to_rgb(frame)
                        break
                else:
                    break  # the stream ended early
        except av.error.FFmpegError:
            pass  # a damaged tail: keep what decoded, the rest repeats the last frame
        if not got:
            raise MediaError(f"{self.source}: no frame of the video could be decoded (zero frames, or the data is corrupt or truncated)")
        return _fill(indices, got), len(got)


def probe(raw: Any, source: str = "video") -> VideoInfo:
    """Frame count, rate and size of a clip (path or bytes), without decoding pixels."""
    with Clip(raw, source) as clip:
        return clip.info()


def read_frames(raw: Any, indices: list[int], source: str = "video") -> tuple[np.ndarray, int]:
    """Decode the frames at ``indices`` of a clip (path or bytes) by seeking: see :meth:`Clip.read`."""
    with Clip(raw, source) as clip:
        return clip.read(indices)


def _fill(indices: list[int], got: dict[int, np.ndarray]) -> np.ndarray:
    """Frames in ``indices`` order; a wanted frame that did not decode takes the last one before it."""
    decoded = sorted(got)
    out = []
    for i in indices:
        k = bisect.bisect_right(decoded, i) - 1
        out.append(got[decoded[max(k, 0)]])
    return np.stack(out)


def read_all_frames(raw: Any, source: str = "video") -> np.ndarray:
    """Decode every frame (the slow path that seeking avoids; used by the benchmark)."""
    container = _open(raw, source)
    try:
        stream = container.streams.video[0]
        _threads(stream)
        return np.stack([to_rgb(f) for f in container.decode(stream)])
    finally:
        container.close()


# ---- torchcodec ------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def torchcodec_status() -> tuple[bool, str]:
    """Whether torchcodec loads here (it needs a system FFmpeg), and why not."""
    try:
        from torchcodec.decoders import VideoDecoder

        VideoDecoder(write_video(np.zeros((2, 16, 16, 3), np.uint8), None, fps=2))
    except Exception as exc:  # any failure to load or run means: not usable here
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return True, ""


def check_backend(backend: str) -> None:
    """Refuse an unknown backend, or torchcodec where it cannot load."""
    if backend not in BACKENDS:
        raise ConfigError(f"video.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torchcodec":
        ok, why = torchcodec_status()
        if not ok:
            raise ConfigError(f"video.backend=torchcodec: torchcodec cannot load here ({why}); it needs a system FFmpeg. Use backend: pyav.")


def probe_torchcodec(raw: Any, source: str = "video") -> VideoInfo:
    """:func:`probe` through torchcodec (its metadata, scanned exactly)."""
    decoder = _torchcodec_decoder(raw, source)
    meta = decoder.metadata
    n = int(meta.num_frames or 0)
    if n <= 0:
        raise MediaError(f"{source}: the video has zero frames")
    return VideoInfo(n, float(meta.average_fps), int(meta.width), int(meta.height))


def read_frames_torchcodec(raw: Any, indices: list[int], source: str = "video") -> tuple[np.ndarray, int]:
    """:func:`read_frames` through torchcodec's ``get_frames_at`` (frames past the end repeat the last)."""
    decoder = _torchcodec_decoder(raw, source)
    n = len(decoder)
    wanted = sorted(set(i for i in indices if 0 <= i < n))
    if not wanted:
        raise MediaError(f"{source}: no frame of the video could be decoded")
    batch = decoder.get_frames_at(wanted).data.permute(0, 2, 3, 1).numpy()
    return _fill(indices, dict(zip(wanted, batch))), len(wanted)


def _torchcodec_decoder(raw: Any, source: str):
    from torchcodec.decoders import VideoDecoder

    if isinstance(raw, (str, Path)) and not Path(raw).is_file():
        raise MediaError(f"{source}: video file not found: {raw}")
    try:
        return VideoDecoder(str(raw) if isinstance(raw, Path) else bytes(raw) if isinstance(raw, (bytearray, memoryview)) else raw, seek_mode="exact")
    except (RuntimeError, ValueError) as exc:
        raise MediaError(f"{source}: not a readable video ({exc})") from exc


# ---- writing ---------------------------------------------------------------------------------
def write_video(frames: np.ndarray, path: str | Path | None, fps: float = 8, codec: str = "libx264", source: str = "video", **options: str) -> bytes | Path:
    """Encode ``frames [T, H, W, 3]`` uint8 as H.264 MP4 (``codec="libvpx-vp9"`` with a ``.webm``
    path: VP9 WebM). ``path=None`` returns the MP4 bytes. ``options`` go to the encoder
    (``g="250"``, ``crf="18"``...). H.264 in yuv420p needs even frame sizes: odd ones are refused
    here with a clear error (libx264 only says ``avcodec_open2`` failed)."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise MediaError(f"{source}: frames must be a [T, H, W, 3] uint8 array, got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise MediaError(f"{source}: no frames to write")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise MediaError(f"{source}: frame size {w}x{h} is odd; H.264 (yuv420p) needs even width and height (crop or pad by one pixel)")
    target: Any = io.BytesIO() if path is None else str(path)
    fmt = "mp4" if path is None else None
    with av.open(target, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=_fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if options:
            stream.options = {k: str(v) for k, v in options.items()}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return target.getvalue() if path is None else Path(path)


def _fraction(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
