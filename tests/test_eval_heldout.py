"""The end-of-training evaluation (eval.json): exact match beside chance, blind_frequent (old key
``blind``) and blind_model, per modality and kind."""

from __future__ import annotations

import pytest

from omnimodal.data.dataset import training_texts
from omnimodal.data.records import Record
from omnimodal.eval.heldout import blind_answer, blind_baseline, evaluate, score, without_media


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


def conversation(turns: list[tuple[str, str]]) -> Record:
    """A multi-turn training record: the image in the first user turn, then question/answer turns."""
    messages = []
    for i, (question, answer) in enumerate(turns):
        parts = ([{"type": "image", "path": "x.png"}] if i == 0 else []) + [{"type": "text", "text": question}]
        messages += [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return Record(messages, "train.jsonl:1", None, None)


def test_blind_frequent_counts_every_turn_of_multi_turn_training_conversations():
    """Every answer of a training conversation counts under its own question (not the last
    answer under all the questions joined), so single-question test records find theirs."""
    train = [
        conversation([("colour?", "red"), ("shape?", "circle")]),
        conversation([("shape?", "circle"), ("colour?", "blue")]),
        conversation([("colour?", "blue"), ("count?", "two")]),
        record("shape?", "square", "shape"),
    ]
    baseline = blind_baseline(train)
    assert baseline["answers"] == {"colour?": "blue", "count?": "two", "shape?": "circle"}
    assert baseline["fallback"] == "circle"  # circle and blue twice each: the first seen wins
    test = [record("colour?", "blue", "colour"), record("shape?", "circle", "shape"), record("count?", "one", "count")]
    table = score(test, ["blue", "circle", "one"], baseline, {"image": "vision"})
    assert [table["vision"][k]["blind_frequent"] for k in ("colour", "count", "shape")] == [1.0, 0.0, 1.0]
    # a multi-turn test record is answered for its last question
    assert blind_answer(baseline, conversation([("count?", "two"), ("colour?", "blue")])) == "blue"


def test_scratch_tokenizer_texts_hold_every_turn():
    texts = list(training_texts([conversation([("colour?", "red"), ("shape?", "circle")]), record("count?", "two", "count")]))
    assert texts == ["colour?", "red", "shape?", "circle", "count?", "two"]


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
