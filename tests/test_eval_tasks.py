"""Task files and metrics, checked against hand-computed numbers with scripted models (no torch)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from omnimodal.errors import ConfigError, DataError
from omnimodal.eval import metrics
from omnimodal.eval.runner import Answer, RunOptions, run_task
from omnimodal.eval.tasks import load_task


def user(text: str, image: str | None = None) -> dict:
    parts = ([{"type": "image", "path": image}] if image else []) + [{"type": "text", "text": text}]
    return {"role": "user", "content": parts}


def line(question: str, reply: str | None = None, image: str | None = None, **extra) -> dict:
    """A data line: the question, optionally the assistant's reference reply, extra fields."""
    messages = [user(question, image)]
    if reply is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
    return {"messages": messages, **extra}


def write_task(root: Path, name: str, rows: list[dict], train: list[dict] | None = None, **keys) -> Path:
    import yaml

    (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"name": name, "data": f"{name}.jsonl", **keys}
    if train is not None:
        (root / f"{name}-train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
        task["train"] = f"{name}-train.jsonl"
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def last_text(conversation: list[dict]) -> str:
    return "\n".join(p["text"] for p in conversation[-1]["content"] if p["type"] == "text")


class Scripted:
    """A model whose answer is a function of the conversation it is asked."""

    name = "scripted"
    part_types = {"image": "vision"}

    def __init__(self, answer):
        self.answer = answer
        self.asked: list[list[dict]] = []

    def generate(self, conversations, max_tokens, top_logprobs=False, sources=()):
        self.asked += list(conversations)
        return [Answer(self.answer(c)) for c in conversations]


def run(path: Path, backend, blind_model: bool = False) -> dict:
    return run_task(load_task(path), backend, RunOptions(blind_model=blind_model, progress=False))


# ---- metrics --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("The Cat.", "cat"), ("  two  dogs!", "2 dogs"), ("an apple", "apple"), ("3.5", "3.5"), ("1,000", "1000"), ("Yes", "yes"),
])
def test_normalise_answer(text, expected):
    assert metrics.normalise_answer(text) == expected


@pytest.mark.parametrize("text, index", [
    ("B", 1), ("(B)", 1), ("B. cat", 1), ("The answer is B", 1), ("answer: (c)", 2), ("b", 1), ("C) fish", 2),
    ("dog", 1), ("I think (A) is right", 0), ("E", None), ("a cat", 0), ("nothing", None), ("A dog", 1),
])
def test_letter_extraction_is_lenient_but_stays_within_the_options(text, index):
    assert metrics.extract_letter(text, ["cat", "dog", "fish", "bird"]) == index


def test_vqa_accuracy_and_numeric_tolerance():
    assert metrics.vqa_accuracy("cat", ["cat", "cat", "dog"]) == pytest.approx(2 / 3)
    assert metrics.vqa_accuracy("Cat.", ["cat"] * 4) == 1.0
    assert metrics.numeric_match("about 104", ["100"]) == 1.0
    assert metrics.numeric_match("106", ["100"]) == 0.0
    assert metrics.numeric_match("0", ["0"]) == 1.0
    assert metrics.numeric_match("13%", ["12%"]) == 0.0
    assert metrics.numeric_match("Paris", ["paris"]) == 1.0


# ---- open-answer tasks ----------------------------------------------------------------------------
VQA_ROWS = [
    line("What animal?", answers=["cat"] * 4 + ["dog"] * 6),
    line("What colour?", answers=["red"] * 2 + ["blue"] * 8),
    line("How many?", answers=["two"] + ["three"] * 9),
]
VQA_ANSWERS = {"What animal?": "Cat.", "What colour?": "red", "How many?": "2"}


def test_vqa_accuracy_task_with_hand_computed_score_and_chance(tmp_path):
    path = write_task(tmp_path, "vqa", VQA_ROWS, metric="vqa_accuracy")
    result = run(path, Scripted(lambda c: VQA_ANSWERS[last_text(c)]))
    # matches: 4 -> 1, 2 -> 2/3, 1 -> 1/3
    assert result["scores"]["score"] == pytest.approx((1 + 2 / 3 + 1 / 3) / 3)
    assert [i["score"] for i in result["items"]] == pytest.approx([1, 2 / 3, 1 / 3])
    # chance: a guess among {cat, red, 2}: (1/3 + 2/9 + 1/9) / 3
    assert result["baselines"]["chance"]["score"] == pytest.approx(2 / 9)
    assert "unavailable" in result["baselines"]["blind_frequent"]


def test_exact_match_counts_any_reference(tmp_path):
    path = write_task(tmp_path, "em", VQA_ROWS, metric="exact_match")
    assert run(path, Scripted(lambda c: VQA_ANSWERS[last_text(c)]))["scores"]["score"] == 1.0


def test_numeric_task(tmp_path):
    rows = [line("a?", "100"), line("b?", "0"), line("c?", "12%"), line("d?", "paris")]
    answers = {"a?": "104", "b?": "0.0", "c?": "The answer is 13%", "d?": "Paris."}
    path = write_task(tmp_path, "num", rows, metric="numeric", tolerance=0.05)
    result = run(path, Scripted(lambda c: answers[last_text(c)]))
    assert [i["score"] for i in result["items"]] == [1.0, 1.0, 0.0, 1.0]
    assert result["scores"]["score"] == 0.75


def test_yes_no_precision_recall_f1(tmp_path):
    refs = ["yes", "yes", "no", "no", "yes"]
    preds = ["yes", "no", "yes", "no", "Yes, it is."]
    rows = [line(f"q{k}?", r) for k, r in enumerate(refs)]
    path = write_task(tmp_path, "pope", rows, metric="yes_no")
    scores = run(path, Scripted(lambda c: preds[int(last_text(c)[1])]))["scores"]
    # tp = 2 (q0, q4), fp = 1 (q2), fn = 1 (q1)
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3) and scores["f1"] == pytest.approx(2 / 3)
    assert scores["yes_ratio"] == pytest.approx(3 / 5)


def test_answer_regex_extracts_the_answer_and_a_miss_scores_as_no_answer(tmp_path):
    rows = [line("a?", "red"), line("b?", "blue"), line("c?", "green")]
    replies = {"a?": "Let me see... ANSWER: Red", "b?": "blue, I think", "c?": "ANSWER: blue"}
    path = write_task(tmp_path, "rx", rows, metric="exact_match", answer_regex=r"ANSWER:\s*(\w+)")
    result = run(path, Scripted(lambda c: replies[last_text(c)]))
    assert [i["extracted"] for i in result["items"]] == ["Red", None, "blue"]
    assert [i["score"] for i in result["items"]] == [1.0, 0.0, 0.0] and result["items"][1]["note"] == "answer_regex did not match"
    bad = tmp_path / "badrx.yaml"
    bad.write_text("data: rx.jsonl\nmetric: exact_match\nanswer_regex: '(unclosed'\n")
    with pytest.raises(ConfigError, match="badrx.yaml: answer_regex .* is not a valid regular expression"):
        load_task(bad)


# ---- multiple choice and CircularEval ----------------------------------------------------------------
MC_ROWS = [
    line("Which animal?", options=["cat", "dog", "fish", "bird"], answer="B"),
    line("Which colour?", options=["red", "green", "blue", "pink"], answer=3),
]
GOLD = {"Which animal?": "dog", "Which colour?": "pink"}


def shown_options(text: str) -> dict[str, str]:
    return {m.group(2): m.group(1) for m in re.finditer(r"^([A-Z])\. (.+)$", text, re.M)}


def test_always_a_scores_one_over_n_plain_and_zero_circular(tmp_path):
    path = write_task(tmp_path, "mc", MC_ROWS, metric="multiple_choice", prompt="{question}\n{options}\nAnswer with the letter.",
                      multiple_choice={"circular": True})
    result = run(path, Scripted(lambda c: "A"))
    assert result["n"] == 2 and result["n_asked"] == 8  # 4 rotations each
    assert result["scores"]["accuracy"] == pytest.approx(1 / 4)
    assert result["scores"]["circular_accuracy"] == 0.0 and result["scores"]["score"] == 0.0
    assert result["baselines"]["chance"]["accuracy"] == pytest.approx(1 / 4)
    assert result["baselines"]["chance"]["circular_accuracy"] == pytest.approx((1 / 4) ** 4)


def test_circular_eval_rotates_the_options_and_needs_every_rotation(tmp_path):
    path = write_task(tmp_path, "mc", MC_ROWS, metric="multiple_choice", prompt="{question}\n{options}",
                      multiple_choice={"circular": True})
    seen: list[tuple[str, str]] = []

    def oracle(conv):  # right, except on "Which colour?" when pink is shown first
        text = last_text(conv)
        question, options = text.splitlines()[0], shown_options(text)
        seen.append((question, "".join(sorted(options, key=options.get))))
        letter = options[GOLD[question]]
        return "(B) pink" if question == "Which colour?" and letter == "A" else f"The answer is {letter}"

    result = run(path, Scripted(oracle))
    assert result["scores"]["accuracy"] == pytest.approx(7 / 8)
    assert result["scores"]["circular_accuracy"] == pytest.approx(1 / 2)
    assert len(set(seen)) == 8  # every rotation is a different order
    pink_first = [i for i in result["items"] if i["question"].startswith("Which colour?") and i["gold"] == 0]
    assert len(pink_first) == 1 and pink_first[0]["choice"] == 1 and pink_first[0]["score"] == 0.0


def test_blind_frequent_from_the_tasks_training_file(tmp_path):
    train = [line("What colour?", "red"), line("What colour?", "red"), line("What colour?", "blue"), line("What shape?", "circle")]
    rows = [line("What colour?", "red"), line("What colour?", "blue"), line("What shape?", "circle"), line("What size?", "red")]
    path = write_task(tmp_path, "freq", rows, train=train, metric="exact_match")
    result = run(path, Scripted(lambda c: "nothing"))
    # predictions: red (right), red (wrong), circle (right), fallback red (right)
    assert [i["blind_frequent"]["prediction"] for i in result["items"]] == ["red", "red", "circle", "red"]
    assert result["baselines"]["blind_frequent"]["score"] == 0.75
    assert result["scores"]["score"] == 0.0


def test_multiple_choice_blind_frequent_from_plain_training_records(tmp_path):
    train = [line("Which animal?", "dog"), line("Which animal?", "dog"), line("Which animal?", "cat"), line("Which colour?", "red")]
    path = write_task(tmp_path, "mcfreq", MC_ROWS, train=train, metric="multiple_choice", prompt="{question}\n{options}",
                      multiple_choice={"circular": True})
    result = run(path, Scripted(lambda c: "A"))
    # "dog" is right in all 4 rotations of the animal question; "red" in none of the colour one's
    assert result["baselines"]["blind_frequent"]["accuracy"] == pytest.approx(4 / 8)
    assert result["baselines"]["blind_frequent"]["circular_accuracy"] == pytest.approx(1 / 2)


def test_item_ids_must_be_unique(tmp_path):
    path = write_task(tmp_path, "dup", [line("a?", "x", id="q1"), line("b?", "y", id="q1")], metric="exact_match")
    with pytest.raises(DataError, match=r"dup.jsonl:2: id 'q1' is used twice \(first at .*dup.jsonl:1\)"):
        run(path, Scripted(lambda c: "x"))


def test_blind_model_removes_the_media_and_asks_text_items_once(tmp_path):
    rows = [line("What colour?", "red", image="a.png"), line("What colour?", "red", image="b.png"), line("Say red", "red")]
    path = write_task(tmp_path, "bm", rows, metric="exact_match")

    def sees(conv):
        return "red" if any(p["type"] == "image" for m in conv for p in m["content"]) or last_text(conv) == "Say red" else "blue"

    backend = Scripted(sees)
    result = run(path, backend, blind_model=True)
    assert result["scores"]["score"] == 1.0
    assert result["baselines"]["blind_model"]["score"] == pytest.approx(1 / 3)
    assert len(backend.asked) == 5  # 3 with media as given, 2 again without their image
    assert all(p["type"] == "text" for c in backend.asked[3:] for m in c for p in m["content"])
    assert Path(backend.asked[0][-1]["content"][0]["path"]) == (tmp_path / "a.png").resolve()


def test_few_shot_examples_come_first_as_answered_turns(tmp_path):
    path = write_task(tmp_path, "fs", MC_ROWS[:1], metric="multiple_choice", prompt="Q: {question}\n{options}",
                      few_shot=[{"question": "Which fruit?", "options": ["apple", "stone"], "answer": "apple"}])
    backend = Scripted(lambda c: "B")
    result = run(path, backend)
    conv = backend.asked[0]
    assert [m["role"] for m in conv] == ["user", "assistant", "user"]
    assert last_text(conv[:1]) == "Q: Which fruit?\nA. apple\nB. stone" and conv[1]["content"][0]["text"] == "A"
    assert result["scores"]["score"] == 1.0 and result["settings"]["few_shot"] == 1


# ---- bad task files ---------------------------------------------------------------------------------
def test_task_file_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x.jsonl\nmetric: exact\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: metric 'exact' is unknown"):
        load_task(bad)
    bad.write_text("data: x.jsonl\nmetric: exact_match\nprompts: '{question}'\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['prompts'\]"):
        load_task(bad)
    path = write_task(tmp_path, "mcbad", [line("Which?", "A", options=["x"])], metric="multiple_choice")
    with pytest.raises(DataError, match=r"mcbad.jsonl:1: a multiple-choice item needs 'options'"):
        run(path, Scripted(lambda c: "A"))
    path = write_task(tmp_path, "tmpl", [line("Which?", "A")], metric="exact_match", prompt="{question} {hint}")
    with pytest.raises(ConfigError, match=r"cannot be filled for .*tmpl.jsonl:1"):
        run(path, Scripted(lambda c: "A"))


def test_task_data_in_the_other_training_formats_gives_the_same_numbers(tmp_path):
    """LLaVA JSON and a Hugging Face dataset on disk, read by the training readers, extra
    fields (``answers``, ``options``, ``answer``) kept."""
    import datasets
    import yaml
    llava = [{"id": f"q{i}", "conversations": [{"from": "human", "value": last_text(r["messages"])}], "answers": r["answers"]}
             for i, r in enumerate(VQA_ROWS)]
    (tmp_path / "vqa.json").write_text(json.dumps(llava))
    datasets.Dataset.from_list([{"messages": [{"role": "user", "content": last_text(r["messages"])}], "answers": r["answers"]}
                                for r in VQA_ROWS]).save_to_disk(str(tmp_path / "vqa-hf"))
    expected = run(write_task(tmp_path, "vqa", VQA_ROWS, metric="vqa_accuracy"), Scripted(lambda c: VQA_ANSWERS[last_text(c)]))
    for data, fmt in (("vqa.json", "auto"), ("vqa.json", "llava"), ("vqa-hf", "auto")):
        path = tmp_path / f"task-{fmt}-{data}.yaml"
        path.write_text(yaml.safe_dump({"name": "vqa", "data": data, "format": fmt, "metric": "vqa_accuracy"}))
        result = run(path, Scripted(lambda c: VQA_ANSWERS[last_text(c)]))
        assert result["scores"]["score"] == expected["scores"]["score"], (data, fmt)
        assert [i["score"] for i in result["items"]] == [i["score"] for i in expected["items"]]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "data": "vqa.json", "format": "csv", "metric": "vqa_accuracy"}))
    with pytest.raises(ConfigError, match="format 'csv' is unknown"):
        load_task(bad)
