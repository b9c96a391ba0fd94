"""Property-based fuzzing of the OpenAI-compatible server, as a client would send requests.

Strategies (hypothesis) for request bodies: odd Unicode with lone surrogates, deep nesting,
wrong types, huge and negative numbers, empty and missing parts, valid base64 that is not
media, unknown part types, oversized bodies and bytes that are not JSON. The invariants:
no response >= 500, every error in OpenAI's shape with no exception text, stack or file path
echoed, and the server still answers a valid request afterwards.

The suite runs a short derandomized pass in-process (``tests/test_server_fuzz.py``); the long
run drives a real ``omnimodal serve`` on 127.0.0.1::

    python -m tests.server_fuzz --requests 5000
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from hypothesis import strategies as st

MODEL = "omnimodal"
LEAKS = re.compile(r"Traceback|File \"|\.py\b|/work/|/home/|site-packages|0x[0-9a-f]{6,}")

SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udc00\ud800", "x\ud83dy"])
ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    SURROGATES,
    st.sampled_from(["", " ", "\x00", "<image>", "<audio>", "<molecule>", "<|end|>", "{{ raise }}", "{% for %}", "\u202e", "😀" * 30]),
)
HUGE = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, -1, 2**31, 2**63, 2**64 + 1]))
NUMBER = st.one_of(HUGE, st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, -1e308, 5e-324]))
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, ODD_TEXT)
JSON = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(ODD_TEXT, inner, max_size=4)), max_leaves=12)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


NOT_MEDIA = st.one_of(st.binary(max_size=64), st.just(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30), st.just(b"RIFF\x00\x00\x00\x00WAVEfmt "))
DATA_URL = st.one_of(
    NOT_MEDIA.map(lambda b: f"data:image/png;base64,{_b64(b)}"),
    st.sampled_from(["data:image/png;base64,!!!!", "data:,", "data:image/png,rawbytes", "http://127.0.0.1:9/x.png",
                     "file:///etc/passwd", "", "data:image/png;base64," + "A" * 5]),
    ODD_TEXT,
)
PART = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, st.one_of(ODD_TEXT, JSON)),
    st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, st.one_of(DATA_URL, JSON)),
    st.builds(lambda u: {"type": "image_url", "image_url": u}, JSON),
    st.builds(lambda d, f: {"type": "input_audio", "input_audio": {"data": d, "format": f}},
              st.one_of(NOT_MEDIA.map(_b64), ODD_TEXT, JSON), st.one_of(st.sampled_from(["wav", "mp3", "flac", ""]), ODD_TEXT)),
    st.builds(lambda s: {"type": "molecule", "smiles": s}, st.one_of(ODD_TEXT, st.sampled_from(["C1CC", "[Xx]", "CCO" * 200]), JSON)),
    st.builds(lambda t, v: {"type": t, "value": v}, ODD_TEXT, JSON),
    st.dictionaries(ODD_TEXT, JSON, max_size=3),
    JSON,
)
ROLE = st.one_of(st.sampled_from(["user", "assistant", "system", "developer", "tool", ""]), ODD_TEXT)
CONTENT = st.one_of(ODD_TEXT, st.lists(PART, max_size=4), st.none(), JSON)
MESSAGE = st.one_of(st.fixed_dictionaries({"role": ROLE, "content": CONTENT}), st.fixed_dictionaries({"role": ROLE}), JSON)
OPTIONAL = {
    "max_tokens": st.one_of(HUGE, JSON), "max_completion_tokens": HUGE, "temperature": st.one_of(NUMBER, JSON),
    "top_p": NUMBER, "n": HUGE, "stream": st.one_of(st.booleans(), JSON), "stop": st.one_of(ODD_TEXT, st.lists(ODD_TEXT, max_size=6), JSON),
    "seed": st.one_of(HUGE, JSON), "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), JSON),
    "logit_bias": JSON, "user": ODD_TEXT,
}
WILD_BODY = st.fixed_dictionaries(
    {"model": st.one_of(st.just(MODEL), ODD_TEXT), "messages": st.one_of(st.lists(MESSAGE, max_size=4), JSON)},
    optional=OPTIONAL,
)
# Near-valid requests: the structure is right and only the leaves are odd, so the fuzz reaches
# media decoding, the chat template, the tokenizer and generation, not only the schema.
NEAR_PART = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, ODD_TEXT),
    st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, DATA_URL),
    st.builds(lambda d, f: {"type": "input_audio", "input_audio": {"data": d, "format": f}},
              NOT_MEDIA.map(_b64), st.sampled_from(["wav", "mp3", "flac", "ogg", ""])),
    st.builds(lambda s: {"type": "molecule", "smiles": s}, st.one_of(ODD_TEXT, st.sampled_from(["C1CC", "[Xx]", "c1ccccc1O"]))),
    st.builds(lambda t: {"type": t, "text": "x"}, st.sampled_from(["image", "audio", "video_url", "input_text", "file"])),
)
NEAR_MESSAGE = st.fixed_dictionaries({
    "role": st.sampled_from(["user", "assistant", "system", "developer"]),
    "content": st.one_of(ODD_TEXT, st.lists(NEAR_PART, min_size=1, max_size=3)),
})
NEAR_BODY = st.fixed_dictionaries(
    {"model": st.just(MODEL), "messages": st.lists(NEAR_MESSAGE, min_size=1, max_size=3)},
    optional={
        "max_tokens": st.one_of(st.integers(-2, 12), HUGE), "temperature": st.one_of(st.floats(-1, 3), NUMBER),
        "top_p": st.one_of(st.floats(-0.5, 1.5), NUMBER), "seed": HUGE, "n": st.integers(0, 3),
        "stop": st.one_of(ODD_TEXT, st.lists(ODD_TEXT, max_size=5)), "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    },
)
BODY = st.one_of(NEAR_BODY, NEAR_BODY, NEAR_BODY, WILD_BODY)


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


RAW = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b"{", b"null", b"[]", b'{"model": NaN}', b'{"model": "omnimodal", "messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}',
                     _deep(5000), b'{"a":' * 3000 + b"1" + b"}" * 3000, b'"\\ud800"', b"\xff\xfe{}"]),
)


def encode_body(body: Any) -> bytes:
    """JSON bytes as a client library writes them (lone surrogates escaped, so valid JSON)."""
    return json.dumps(body).encode()


def check_response(status: int, content: bytes, content_type: str) -> str | None:
    """Why a response breaks the server's contract (None if it keeps it)."""
    if status >= 500:
        return f"status {status}: {content[:300]!r}"
    if status >= 400:
        try:
            err = json.loads(content)["error"]
        except (ValueError, KeyError, TypeError):
            return f"status {status} without OpenAI's error shape: {content[:300]!r}"
        if set(err) != {"message", "type", "param", "code"}:
            return f"error keys {sorted(err)}"
        if LEAKS.search(str(err["message"])):
            return f"error message leaks internals: {err['message'][:300]!r}"
    elif "text/event-stream" in content_type and b'"server_error"' in content:
        return f"stream ended with a server error: {content[-300:]!r}"
    return None


VALID = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0}


def main() -> int:
    """Start ``omnimodal serve`` on a tiny model and send ``--requests`` fuzzed requests."""
    import argparse
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    import httpx
    from hypothesis import HealthCheck, given, settings
    from omnimodal_vision.demo import build

    from .test_inference import build_tiny_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    demo = build(tmp / "demo", seed=0, sizes={"train": 40, "val": 4, "test": 4})
    build_tiny_model(demo, extras=True).save_pretrained(tmp / "model")
    cmd = [sys.executable, "-m", "omnimodal.cli", "serve", "--model", str(tmp / "model"), "--port", str(args.port),
           "--served-model-name", MODEL, "--max-request-bytes", "200000", "--max-tokens", "16", "--device", "cpu", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(tmp / "server.log").open("w"))
    base = f"http://127.0.0.1:{args.port}"
    client = httpx.Client(base_url=base, timeout=60)
    try:
        for _ in range(300):
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        counts: dict[int, int] = {}
        failures: list[str] = []

        def send(content: bytes, content_type: str = "application/json") -> None:
            # A fresh connection per request: a reused keep-alive connection can race the
            # server's idle timeout (5 s) while hypothesis is busy, which is not the server's fault.
            try:
                r = client.post("/v1/chat/completions", content=content,
                                headers={"content-type": content_type, "connection": "close"})
            except httpx.TransportError as exc:
                failures.append(f"transport error {type(exc).__name__}: {exc} for {content[:200]!r}")
                return
            counts[r.status_code] = counts.get(r.status_code, 0) + 1
            why = check_response(r.status_code, r.content, r.headers.get("content-type", ""))
            if why:
                failures.append(why)

        n_raw = args.requests // 10

        @settings(max_examples=args.requests - n_raw, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(BODY)
        def bodies(body):
            send(encode_body(body))

        @settings(max_examples=n_raw, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(RAW)
        def raw(content):
            send(content)

        t0 = time.time()
        bodies()
        raw()
        send(b"x" * 300_000)  # oversized
        ok = client.post("/v1/chat/completions", json=VALID)
        print(f"{sum(counts.values())} requests in {time.time() - t0:.0f} s; statuses {dict(sorted(counts.items()))}; "
              f"{len(failures)} contract violations; valid request afterwards: {ok.status_code}")
        for why in failures[:20]:
            print("  ", why)
        return 1 if failures or ok.status_code != 200 or proc.poll() is not None else 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
