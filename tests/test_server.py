"""The HTTP server as a real process on loopback, driven by the official ``openai`` client and httpx."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ._require import require, under_ci
from ._serve import free_port
from .conftest import PYTHON, ROOT, cli_env
from .test_inference import build_tiny_model, wav_bytes

openai = require("openai", "dev")
require("fastapi", "serve")
require("uvicorn", "serve")

pytestmark = pytest.mark.slow

MAX_BYTES = 200_000
MAX_ITEMS = 3
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def server(vision_demo, tmp_path_factory):
    """``omnimodal serve`` in a subprocess on 127.0.0.1; yields (base_url, modality names, log path)."""
    root = tmp_path_factory.mktemp("served")
    model = build_tiny_model(vision_demo, extras=True)
    model.save_pretrained(root / "tiny")
    port = free_port()
    log = root / "server.log"
    cmd = [PYTHON, "-m", "omnimodal.cli", "serve", "--model", str(root / "tiny"), "--host", "127.0.0.1", "--port", str(port),
           "--max-request-bytes", str(MAX_BYTES), "--max-media-items", str(MAX_ITEMS), "--max-tokens", str(MAX_TOKENS),
           "--default-max-tokens", "8", "--device", "cpu"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy after 90 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield base, set(model.modalities), log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="x", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def image_url(vision_demo) -> str:
    path = sorted((vision_demo["train"].parent / "images").rglob("*.png"))[0]
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def user(*parts: dict, text: str = "What colour is the circle?") -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def post(server, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{server[0]}/v1/chat/completions", json=body, timeout=60, **kwargs)


def assert_error(response: httpx.Response, status: int, server, needle: str = "") -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
    assert needle.lower() in err["message"].lower(), err["message"]
    assert httpx.get(f"{server[0]}/health", timeout=5).json()["status"] == "ok"
    return err


def test_models_and_health(server, client):
    [card] = client.models.list().data
    assert card.id == "tiny"
    assert httpx.get(f"{server[0]}/health").json()["status"] == "ok"


def test_plain_and_streamed_completion_with_an_image(client, image_url):
    messages = user(image_part(image_url))
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    choice = out.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 16 and 0 < out.usage.completion_tokens <= 10  # 16 image pseudo-tokens + text
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == choice.message.content and finishes == [choice.finish_reason]
    assert chunks[-1].usage.completion_tokens == out.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_raw_stream_ends_with_done(server):
    with httpx.stream("POST", f"{server[0]}/v1/chat/completions", timeout=60,
                      json={"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_audio_and_molecule_parts(server, client, image_url):
    if not {"audio", "molecule"} <= server[1]:
        msg = f"audio/molecule plugins unavailable here (served: {sorted(server[1])})"
        pytest.fail(msg) if under_ci() else pytest.skip(msg)
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes()).decode(), "format": "wav"}}
    molecule = {"type": "molecule", "smiles": "c1ccccc1O"}
    out = client.chat.completions.create(model="tiny", messages=user(image_part(image_url), audio, molecule, text="Describe it."), max_tokens=4)
    assert isinstance(out.choices[0].message.content, str)
    r = post(server, {"model": "tiny", "messages": user({"type": "molecule", "smiles": "C1CC"})})
    assert_error(r, 400, server, "molecule")
    r = post(server, {"model": "tiny", "messages": user({"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}})})
    assert_error(r, 400, server, "base64")


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"messages": user(image_part("data:image/png;base64,!!notbase64!!"))}, 400, "base64"),
        ({"messages": user(image_part("data:image/png;base64," + base64.b64encode(b"not an image").decode()))}, 400, "not a readable image"),
        ({"messages": user({"type": "video_url", "video_url": {"url": "x"}})}, 400, "unknown type 'video_url'"),
        ({"messages": user({"type": "image", "path": "/etc/passwd"})}, 400, "unknown type 'image'"),  # no server-side paths
        ({"messages": user(image_part("https://example.com/cat.png"))}, 400, "--allow-remote-media"),
        ({"messages": "hello"}, 400, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "content"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS + 1}, 400, "limit"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n=1"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, 400, "text"),
        ({"messages": []}, 400, "messages"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
    ],
)
def test_malformed_requests_get_4xx_and_the_server_stays_up(server, body, status, needle):
    assert_error(post(server, {"model": "tiny", **body}), status, server, needle)


def test_too_many_items_oversized_body_and_bad_json(server, image_url):
    r = post(server, {"model": "tiny", "messages": user(*[image_part(image_url)] * (MAX_ITEMS + 1))})
    assert_error(r, 400, server, "limit")
    big = "data:image/png;base64," + base64.b64encode(b"\0" * MAX_BYTES).decode()
    assert_error(post(server, {"model": "tiny", "messages": user(image_part(big))}), 413, server, "exceeds")
    r = httpx.post(f"{server[0]}/v1/chat/completions", content=b'{"model": "tiny", "messages": [', headers={"content-type": "application/json"})
    assert_error(r, 400, server, "json")
    assert_error(httpx.get(f"{server[0]}/v1/nothing"), 404, server, "not found")


def test_concurrent_requests_are_queued_not_dropped(server, image_url):
    def one(i: int) -> httpx.Response:
        parts = [image_part(image_url)] if i % 2 else []
        return post(server, {"model": "tiny", "messages": user(*parts, text="hello"), "max_tokens": 6, "temperature": 0})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    texts = [r.json()["choices"][0]["message"]["content"] for r in responses]
    assert len(set(texts[0::2])) == 1 and len(set(texts[1::2])) == 1  # same request, same greedy answer, batched or not


def test_client_leaving_mid_stream_does_not_hurt(server):
    with httpx.stream("POST", f"{server[0]}/v1/chat/completions", timeout=60,
                      json={"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": MAX_TOKENS,
                            "stream": True, "temperature": 1.0}) as r:
        next(r.iter_lines())
    assert post(server, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).status_code == 200


def test_remote_media_is_fetched_only_when_allowed(vision_demo, tmp_path):
    """In-process app (Starlette's test client) fetching an image from a loopback HTTP server."""
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from fastapi.testclient import TestClient

    from omnimodal.inference import Pipeline
    from omnimodal.serving.app import ServerSettings, create_app

    image = sorted((vision_demo["train"].parent / "images").rglob("*.png"))[0]
    (tmp_path / "cat.png").write_bytes(image.read_bytes())

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path), **k)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    pipe = Pipeline(build_tiny_model(vision_demo), device="cpu")
    try:
        for allow, status in ((False, 400), (True, 200)):
            app = create_app(pipe, ServerSettings(model_name="m", allow_remote_media=allow))
            with TestClient(app) as tc:
                r = tc.post("/v1/chat/completions", json={"model": "m", "max_tokens": 2, "messages": user(image_part(f"{url}/cat.png"))})
                assert r.status_code == status, r.text
                if allow:
                    r = tc.post("/v1/chat/completions", json={"model": "m", "messages": user(image_part(f"{url}/missing.png"))})
                    assert r.status_code == 400 and "cannot fetch" in r.json()["error"]["message"]
    finally:
        httpd.shutdown()


def test_server_log_has_no_tracebacks(server):
    text = Path(server[2]).read_text()
    assert "Traceback" not in text, text[-3000:]
