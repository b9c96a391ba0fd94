"""No 5xx for any client input: a short derandomized fuzz of the server (the long run is
``python -m tests.server_fuzz --requests 5000``, against a real server on 127.0.0.1)."""

from __future__ import annotations

import pytest

from ._require import require

require("fastapi", "serve")
require("hypothesis", "dev")

from hypothesis import HealthCheck, given, settings  # noqa: E402

from .server_fuzz import BODY, RAW, VALID, check_response, encode_body  # noqa: E402
from .test_inference import build_tiny_model  # noqa: E402

FUZZ = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def client(vision_demo):
    from fastapi.testclient import TestClient

    from omnimodal.inference import Pipeline
    from omnimodal.serving.app import ServerSettings, create_app

    pipe = Pipeline(build_tiny_model(vision_demo, extras=True), device="cpu")
    app = create_app(pipe, ServerSettings(max_tokens=8, default_max_tokens=4, max_request_bytes=100_000))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _post(client, content: bytes):
    r = client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    why = check_response(r.status_code, r.content, r.headers.get("content-type", ""))
    assert why is None, f"{why}\nrequest: {content[:500]!r}"
    return r


def test_fuzzed_request_bodies_never_get_a_5xx(client):
    @FUZZ
    @given(BODY)
    def run(body):
        _post(client, encode_body(body))

    run()
    assert client.post("/v1/chat/completions", json=VALID).status_code == 200


def test_bytes_that_are_not_a_request_never_get_a_5xx(client):
    @settings(FUZZ, max_examples=60)
    @given(RAW)
    def run(content):
        _post(client, content)

    run()
    _post(client, b"x" * 150_000)
    assert client.post("/v1/chat/completions", json=VALID).status_code == 200


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb"])
def test_lone_surrogates_are_a_400_naming_the_field(client, text):
    body = {"model": "omnimodal", "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
    r = _post(client, encode_body(body))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "messages.0.content.0.text" and "UTF-8" in err["message"]


@pytest.mark.parametrize(
    "extra, status",
    [({"seed": 2**64 + 1}, 400), ({"seed": -(2**63)}, 200), ({"temperature": 5e-324, "seed": 1}, 200),
     ({"temperature": 1e-300, "top_p": 5e-324}, 200)],
)
def test_edge_numbers_found_by_the_long_fuzz(client, extra, status):
    r = _post(client, encode_body({**VALID, **extra}))
    assert r.status_code == status, r.text


def test_undecodable_media_errors_do_not_show_object_addresses(client):
    import base64

    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not an image").decode()}}
    r = _post(client, encode_body({"model": "omnimodal", "messages": [{"role": "user", "content": [part]}]}))
    assert r.status_code == 400 and "0x" not in r.json()["error"]["message"]
