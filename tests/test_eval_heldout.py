"""The end-of-training evaluation (eval.json): exact match beside chance, blind_frequent (old key
``blind``) and blind_model, per modality and kind."""

from __future__ import annotations

import pytest

from omnimodal.data.records import Record
from omnimodal.eval.heldout import blind_baseline, evaluate, score, without_media


def record(question: str, answer: str, kind: str, image: bool = True) -> Record:
    parts = ([{"type": "image", "path": "x.png"}] if image else []) + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return Record(messages, f"test.jsonl:{question}{answer}", None, kind)


def test_score_names_every_baseline_and_keeps_the_old_key():
    train = [record("colour?", "red", "colour"), record("colour?", "red", "colour"), record("colour?", "blue", "colour"), record("shape?", "circle", "shape")]
    test = [record("colour?", "red", "colour"), record("colour?", "blue", "colour"), record("colour?", "green", "colour"), record("shape?", "square", "shape")]
    table = score(test, ["red", "blue", "red", "square."], blind_baseline(train), {"image": "vision"}, blind_predictions=["red", "red", "red", "circle"])
    colour = table["vision"]["colour"]
    assert colour["accuracy"] == pytest.approx(2 / 3)
    assert colour["blind_frequent"] == colour["blind"] == pytest.approx(1 / 3)  # always "red"
    assert colour["blind_model"] == pytest.approx(1 / 3)
    assert colour["chance"] == pytest.approx(1 / 3)  # three distinct colour answers
    overall = table["vision"]["overall"]
    assert overall["n"] == 4 and overall["accuracy"] == pytest.approx(3 / 4) and overall["chance"] == pytest.approx((3 * 1 / 3 + 1) / 4)
    assert list(table["vision"]) == ["colour", "shape", "overall"]


def test_without_media_keeps_the_text():
    r = without_media(record("colour?", "red", "colour"))
    assert r.messages[0]["content"] == [{"type": "text", "text": "colour?"}] and not r.media_parts()


def test_evaluate_writes_blind_model_beside_the_score(tiny_model, vision_demo, tmp_path):
    import json

    from omnimodal.data.records import read_jsonl

    records = read_jsonl(vision_demo["test"], {"image": "vision"})
    baseline = blind_baseline(read_jsonl(vision_demo["train"], {"image": "vision"}))
    table = evaluate(tiny_model, records, baseline, batch_size=8, max_new_tokens=3, out_path=tmp_path / "eval.json")
    overall = json.loads((tmp_path / "eval.json").read_text())["vision"]["overall"]
    assert set(overall) == {"accuracy", "chance", "blind_frequent", "blind", "blind_model", "n"} and overall == table["vision"]["overall"]
