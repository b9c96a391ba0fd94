"""A real third-party modality, installed as its own distribution: examples/omnimodal-timeseries.

``.ci/run`` installs it beside omnimodal (``pip install ./examples/omnimodal-timeseries``); with
no edit to ``omnimodal/`` it is listed, meets the contract, loads .npy / .csv / inline values,
trains mixed with vision, answers in ``omnimodal chat`` and over the OpenAI-compatible server.
Under CI a missing install fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from omnimodal.errors import MediaError
from omnimodal.model import build_modalities
from omnimodal.testing import check_modality, default_config

from ._require import require
from .conftest import PYTHON, cli_env
from .test_training import TINY

require("omnimodal_timeseries", "timeseries example", install=".venv/bin/pip install ./examples/omnimodal-timeseries")

from omnimodal_timeseries import demo  # noqa: E402


def modality(**cfg):
    return build_modalities({"timeseries": {**default_config("timeseries"), **cfg}})["timeseries"]


def test_listed_by_omnimodal_plugins_from_its_own_distribution():
    out = subprocess.run([PYTHON, "-m", "omnimodal.cli", "plugins"], capture_output=True, text=True, timeout=120, env=cli_env())
    assert out.returncode == 0, out.stderr
    assert "timeseries  (omnimodal-timeseries 0.1.0)  [ok]  entry point: omnimodal_timeseries" in out.stdout
    assert "modality timeseries: part type 'timeseries', placeholder <timeseries>, API parts ['timeseries'], chat flags --timeseries" in out.stdout


def test_meets_the_plugin_contract(tmp_path):
    report = check_modality("timeseries", tmp_path, n_items=6)
    assert len(set(report.lengths)) > 1 and report.num_tokens == report.lengths  # mlp: a token per patch


def test_npy_csv_and_inline_values_give_the_same_features(tmp_path):
    ts = modality()
    signal = np.random.default_rng(0).standard_normal((3, 50)).astype(np.float32)
    np.save(tmp_path / "s.npy", signal)
    rows = "\n".join(",".join(f"{v:.7g}" for v in row) for row in signal.T)
    (tmp_path / "s.csv").write_text("ecg,resp,temp\n" + rows + "\n")
    (tmp_path / "plain.csv").write_text(rows + "\n")
    parts = [{"type": "timeseries", "path": "s.npy"}, {"type": "timeseries", "path": "s.csv"}, {"type": "timeseries", "path": "plain.csv"},
             {"type": "timeseries", "values": signal.tolist(), "rate": 100}]
    items = [ts.prepare(ts.item_from_part(p, tmp_path), f"part {i}") for i, p in enumerate(parts)]
    for it in items:
        assert it.features["values"].shape == (3, 50) and it.length == it.num_tokens == 7  # ceil(50 / 8) patches
        np.testing.assert_allclose(it.features["values"], items[0].features["values"], atol=1e-5)
    one = ts.prepare([1.0, 2.0, 3.0], "one channel")  # fewer channels are zero-padded
    assert one.features["values"].shape == (3, 3) and float(one.features["values"][1:].abs().sum()) == 0
    assert ts.cli_part("[[1, 2], [3, 4]]") == {"type": "timeseries", "values": [[1, 2], [3, 4]]}
    assert ts.cli_part("x.npy") == {"type": "timeseries", "path": "x.npy"}


def test_resampling_and_cutting_are_explicit():
    ts = modality(rate=50, max_samples=20)
    assert ts.load({"values": [list(range(30))], "rate": 100}, "half rate").shape == (1, 15)
    assert ts.load({"values": [list(range(30))], "rate": 50}, "same rate").shape == (1, 20)  # cut to max_samples
    assert ts.counters == {"series_cut": 1}


@pytest.mark.parametrize("raw, words", [
    ({"values": [[1.0, float("inf")]]}, "NaN or infinite"),
    ([[1.0, 2.0], [3.0]], "rectangular"),
    (np.zeros((4, 10)), "channels <= 3"),
    ([[]], "samples >= 1"),
    ({"values": [[1.0]], "rate": -5}, "rate must be a positive number"),
    ({"rate": 100}, "needs 'values'"),
])
def test_bad_items_are_refused_naming_the_item(raw, words):
    with pytest.raises(MediaError, match="^item 7: ") as err:
        modality().prepare(raw, "item 7")
    assert words in str(err.value)


def test_bad_files_are_refused_naming_file_and_reason(tmp_path):
    ts = modality()
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,x\n")
    (tmp_path / "s.txt").write_text("1,2\n")
    for name, words in (("bad.csv", "bad.csv is not a readable time series"), ("s.txt", "are .npy or .csv"), ("gone.npy", "not found")):
        with pytest.raises(MediaError, match="data.jsonl:3: ") as err:
            ts.prepare(tmp_path / name, "data.jsonl:3")
        assert words in str(err.value)


def test_demo_is_deterministic_balanced_and_needs_the_signal(tmp_path):
    from collections import Counter

    from omnimodal.data.dataset import answer_text
    from omnimodal.data.records import read_jsonl
    from omnimodal.eval.heldout import blind_answer, blind_baseline

    sizes = {"train": 48, "val": 4, "test": 48}
    a, b = demo.build(tmp_path / "a", 0, sizes), demo.build(tmp_path / "b", 0, sizes)
    assert a["train"].read_text() == b["train"].read_text()
    train, test = (read_jsonl(a[s], {"timeseries": "timeseries"}) for s in ("train", "test"))
    answers = Counter((r.kind, answer_text(r)) for r in train)
    assert answers == {(k, ans): 12 // len(demo.ANSWERS[k]) for k in demo.QUESTIONS for ans in demo.ANSWERS[k]}
    baseline = blind_baseline(train)
    blind = sum(blind_answer(baseline, r) == answer_text(r) for r in test) / len(test)
    assert blind < 0.5  # 1/2 on trend and period, 1/3 on spike and peaks
    assert sum("values" in r.media_parts()[0] for r in train) == 12  # every 4th signal inline


@pytest.mark.slow
def test_trains_mixed_with_vision_then_chat_and_server_answer(vision_demo, tmp_path, capsys):
    """`omnimodal train modalities=[vision,timeseries]` (shortened), then chat and the OpenAI server."""
    ts = demo.build(tmp_path / "ts", 0, {"train": 40, "val": 4, "test": 8})
    run = tmp_path / "run"
    overrides = [
        *TINY, "modalities=[vision,timeseries]", "modalities.timeseries.encoder.width=32", "modalities.timeseries.encoder.depth=1",
        f"data.train=[{vision_demo['train']},{ts['train']}]", f"data.test=[{vision_demo['test']},{ts['test']}]",
        "trainer.max_steps=6", "trainer.max_epochs=1", f"hydra.run.dir={run}",
    ]
    out = subprocess.run([PYTHON, "-m", "omnimodal.cli", "train", *overrides], capture_output=True, text=True, timeout=600, env=cli_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    saved = json.loads((run / "model" / "omnimodal.json").read_text())["modalities"]
    assert sorted(saved) == ["timeseries", "vision"] and saved["timeseries"]["distribution"] == "omnimodal-timeseries"
    table = json.loads((run / "result.json").read_text())["eval"]
    assert table["timeseries"]["overall"]["n"] == 8 and table["vision"]["overall"]["n"] > 0

    from omnimodal.cli import main

    signal = demo.make_signal(__import__("random").Random(0), "spike", "second")
    np.save(tmp_path / "sig.npy", signal)
    args = ["chat", "--model", str(run), "--max-new-tokens", "3", "--device", "cpu"]
    assert main([*args, "--part", f"timeseries={tmp_path / 'sig.npy'}", demo.QUESTIONS["spike"]]) == 0
    assert capsys.readouterr().out.strip()  # an answer came back
    assert main([*args, "--timeseries", json.dumps(signal[:, :40].tolist()), demo.QUESTIONS["trend"]]) == 0
    assert main([*args, "--part", f"timeseries={tmp_path / 'missing.npy'}", "hi"]) == 2
    err = capsys.readouterr().err
    assert "message 0 part 0 (timeseries)" in err and "missing.npy" in err

    from fastapi.testclient import TestClient

    import omnimodal
    from omnimodal.serving.app import create_app

    def ask(part):
        body = {"model": "omnimodal", "max_tokens": 3, "temperature": 0, "messages": [{"role": "user", "content": [part, {"type": "text", "text": demo.QUESTIONS["peaks"]}]}]}
        return http.post("/v1/chat/completions", json=body)

    with TestClient(create_app(omnimodal.load(run, device="cpu"))) as http:
        ok = ask({"type": "timeseries", "values": signal.tolist(), "rate": 100})
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["role"] == "assistant"
        refused = ask({"type": "timeseries", "path": str(tmp_path / "sig.npy")})  # never a server-side path
        assert refused.status_code == 400 and "takes 'values'" in refused.json()["error"]["message"]
