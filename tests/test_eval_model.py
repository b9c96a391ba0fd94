"""Task evaluation of a real (tiny) model: option log-likelihoods, and the same numbers in-process
and through omnimodal's server; the server's logprobs and its refusal of unsupported OpenAI fields."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from omnimodal.errors import ConfigError, EvaluationError
from omnimodal.eval.runner import Endpoint, InProcess, RunOptions, run_task
from omnimodal.eval.tasks import load_task

from ._require import require
from ._serve import serve_in_thread
from .conftest import PYTHON, ROOT, cli_env
from .test_eval_tasks import line, write_task
from .test_inference import build_tiny_model

QUESTIONS = ["What colour is the circle?", "What shape is it?", "How many shapes are there?"]
OPTIONS = [["red", "green", "blue"], ["circle", "square", "triangle"], ["one", "two", "three"]]


@pytest.fixture(scope="module")
def tasks(vision_demo, tmp_path_factory):
    """An open-answer task, a circular multiple-choice task by generation, one by first-token logprobs,
    and one by option log-likelihood, all on the demo's test images."""
    root = tmp_path_factory.mktemp("tasks")
    images = sorted((vision_demo["test"].parent / "images").rglob("*.png"))[:3]
    mc = [line(q, image=str(img), options=o, answer=k % 3) for k, (q, o, img) in enumerate(zip(QUESTIONS, OPTIONS, images))]
    open_rows = [line(q, "red", image=str(img)) for q, img in zip(QUESTIONS, images)] + [line("Say red", "red")]
    prompt = "{question}\n{options}\nAnswer with the option's letter."
    return {
        "open": write_task(root, "open", open_rows, metric="exact_match", max_tokens=4),
        "mc_generate": write_task(root, "mc_generate", mc, metric="multiple_choice", prompt=prompt, max_tokens=3,
                                  multiple_choice={"circular": True}),
        "mc_logprobs": write_task(root, "mc_logprobs", mc, metric="multiple_choice", prompt=prompt, max_tokens=1,
                                  multiple_choice={"method": "logprobs", "circular": True}),
        "mc_loglik": write_task(root, "mc_loglik", mc, metric="multiple_choice",
                                multiple_choice={"method": "loglikelihood", "length_normalisation": "mean"}),
    }


@pytest.fixture(scope="module")
def pipe(vision_demo):
    from omnimodal.inference import Pipeline

    return Pipeline(build_tiny_model(vision_demo), device="cpu")


@pytest.fixture(scope="module")
def served(pipe):
    """omnimodal's server on loopback, in a thread, serving the same pipeline; yields its /v1 URL."""
    require("fastapi", "serve")
    require("uvicorn", "serve")
    from omnimodal.serving.app import ServerSettings, create_app

    url, stop = serve_in_thread(create_app(pipe, ServerSettings(model_name="tiny", max_tokens=16)), timeout=30)
    yield f"{url}/v1"
    stop()


def evaluate(path, backend, blind_model=True):
    return run_task(load_task(path), backend, RunOptions(blind_model=blind_model, progress=False))


def test_option_loglikelihood_matches_an_unbatched_forward_pass(pipe, tasks):
    result = evaluate(tasks["mc_loglik"], InProcess(pipe, batch_size=2), blind_model=False)
    from omnimodal.eval.tasks import conversation, read_items

    task = load_task(tasks["mc_loglik"])
    for item, row in zip(read_items(task.data[0], pipe.part_types(), task.metric), result["items"]):
        expected = []
        for option in item.options:
            msgs = [*conversation(task, item, []), {"role": "assistant", "content": [{"type": "text", "text": option}]}]
            prompt = pipe.prepare(msgs, add_generation_prompt=False)
            labels = torch.tensor(prompt.sample["labels"])
            batch = pipe.collate([prompt])
            with torch.no_grad():
                logits = pipe.model(batch["input_ids"], batch["attention_mask"], media=batch["media"]).logits[0].float()
            logp = torch.log_softmax(logits[:-1], -1)
            scored = labels[1:] != -100  # option tokens + the template's end-of-turn token
            expected.append(float(logp[scored].gather(1, labels[1:][scored, None]).sum()) / int(scored.sum()))
        assert row["option_scores"] == pytest.approx(expected, abs=1e-4)
        assert row["choice"] == max(range(3), key=expected.__getitem__)
    assert result["settings"]["multiple_choice"]["method"] == "loglikelihood"


def test_end_of_turn_scoring_is_a_choice(pipe, tasks):
    from omnimodal.eval.tasks import conversation, read_items

    task = load_task(tasks["mc_loglik"])
    item = read_items(task.data[0], pipe.part_types(), task.metric)[0]
    backend = InProcess(pipe)
    with_end = backend.loglikelihoods(conversation(task, item, []), item.options, True, "t")
    without = backend.loglikelihoods(conversation(task, item, []), item.options, False, "t")
    assert [n for _, n in with_end] == [n + 1 for _, n in without]  # the '<|end|>' token


@pytest.mark.slow
def test_in_process_and_served_evaluation_give_the_same_numbers(pipe, tasks, served):
    local = InProcess(pipe, batch_size=4)
    remote = Endpoint(served, "tiny", concurrency=3)
    for name in ("open", "mc_generate", "mc_logprobs"):
        a, b = evaluate(tasks[name], local), evaluate(tasks[name], remote)
        assert a["scores"] == b["scores"] and a["baselines"] == b["baselines"], name
        assert [(i["prediction"], i.get("choice"), i["blind_model"]) for i in a["items"]] == \
               [(i["prediction"], i.get("choice"), i["blind_model"]) for i in b["items"]], name
    assert a["n_asked"] == 9 and all("choice" in i for i in a["items"])
    with pytest.raises(ConfigError, match="in-process"):
        evaluate(tasks["mc_loglik"], remote)


@pytest.mark.slow
def test_cli_eval_against_an_endpoint(pipe, tasks, served, tmp_path):
    from omnimodal.plugins import get_registry

    # The autouse fixture reset the plugin registry; the in-thread server's request threads would
    # all build it at once (get_registry is not thread-safe on first use; `omnimodal serve` builds
    # it before serving).
    get_registry()
    cmd = [PYTHON, "-m", "omnimodal.cli", "eval", "--endpoint", served, "--model", "tiny", "--task", str(tasks["mc_logprobs"]),
           "--output", str(tmp_path), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=cli_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mc_logprobs" in r.stdout and "circular_accuracy" in r.stdout
    got = json.loads((tmp_path / "mc_logprobs.json").read_text())
    want = evaluate(tasks["mc_logprobs"], InProcess(pipe))
    assert got["scores"] == want["scores"] and got["model"] == f"tiny @ {served}"
    assert [i["choice"] for i in got["items"]] == [i["choice"] for i in want["items"]]
    r = subprocess.run([*cmd[:6], "--task", str(tasks["mc_logprobs"])], capture_output=True, text=True, timeout=120, cwd=ROOT, env=cli_env())
    assert r.returncode == 2 and "--endpoint needs --model NAME" in r.stderr


@pytest.mark.slow
def test_server_returns_openai_logprobs_and_refuses_unsupported_fields(served):
    import httpx

    body = {"model": "tiny", "messages": [{"role": "user", "content": "Say red"}], "max_tokens": 3, "temperature": 0,
            "logprobs": True, "top_logprobs": 5, "some_client_extra": {"x": 1}}
    r = httpx.post(f"{served}/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == r.json()["usage"]["completion_tokens"]
    first = content[0]
    assert set(first) == {"token", "logprob", "bytes", "top_logprobs"} and len(first["top_logprobs"]) == 5
    assert first["logprob"] == pytest.approx(first["top_logprobs"][0]["logprob"])  # greedy: the top token
    assert first["bytes"] == list(first["token"].encode())
    plain = httpx.post(f"{served}/chat/completions", json={**body, "logprobs": False, "top_logprobs": None}, timeout=60).json()
    assert plain["choices"][0]["logprobs"] is None
    for field, value in [("logit_bias", {"5": 10}), ("n", 2), ("presence_penalty", 0.5), ("tools", [{"type": "function"}]),
                         ("response_format", {"type": "json_object"}), ("reasoning_effort", "low")]:
        r = httpx.post(f"{served}/chat/completions", json={"model": "tiny", "messages": body["messages"], field: value}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == field and field in r.json()["error"]["message"], (field, r.text)
    neutral = {"logit_bias": {}, "presence_penalty": 0, "tools": [], "response_format": {"type": "text"}, "user": "u", "metadata": {"a": "b"}}
    assert httpx.post(f"{served}/chat/completions", json={"model": "tiny", "messages": body["messages"], "max_tokens": 2, **neutral}, timeout=60).status_code == 200
    r = httpx.post(f"{served}/chat/completions", json={"model": "tiny", "messages": body["messages"], "top_logprobs": 2}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"


class _NoLogprobs(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        reply = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_runner_fails_clearly_when_an_endpoint_returns_no_logprobs(tasks):
    server = HTTPServer(("127.0.0.1", 0), _NoLogprobs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        with pytest.raises(EvaluationError, match="returned no logprobs .*method: generate instead"):
            evaluate(tasks["mc_logprobs"], Endpoint(url, "other"), blind_model=False)
        assert evaluate(tasks["mc_generate"], Endpoint(url, "other"), blind_model=False)["scores"]["accuracy"] == pytest.approx(1 / 3)
    finally:
        server.shutdown()


@pytest.mark.slow
def test_cli_eval_two_runs_side_by_side(vision_demo, tasks, tmp_path):
    for k, name in enumerate(("a", "b")):
        model = build_tiny_model(vision_demo)
        with torch.no_grad():  # a second, different model
            for p in model.decoder.parameters():
                p.add_(k * 0.1 * torch.randn_like(p))
        model.save_pretrained(tmp_path / name / "model")
    out = tmp_path / "cmp"
    cmd = [PYTHON, "-m", "omnimodal.cli", "eval", str(tmp_path / "a"), str(tmp_path / "b"), "--task", str(tasks["open"]),
           "--task", str(tasks["mc_logprobs"]), "--device", "cpu", "--output", str(out), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=cli_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "blind_model" in r.stdout and "circular_accuracy" in r.stdout and "item(s) differ" in r.stdout
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison) == {"open", "mc_logprobs"}
    a = json.loads((out / "A" / "mc_logprobs.json").read_text())
    b = json.loads((out / "B" / "mc_logprobs.json").read_text())
    differ = [(x["id"], x["rotation"]) for x, y in zip(a["items"], b["items"]) if x["score"] != y["score"]]
    assert [(d["id"], d["rotation"]) for d in comparison["mc_logprobs"]["disagreements"]] == differ
    assert (out / "results.png").stat().st_size > 1000
