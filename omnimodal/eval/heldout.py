"""The end-of-training evaluation: greedy answers on the run's held-out questions, exact match,
per modality and kind, beside three baselines (``eval.json``).

- ``chance``: a uniform guess among the distinct answers of that modality and kind in the
  test set (per item ``1/|answers|``).
- ``blind_frequent`` (also under its old key ``blind``): each question answered with the answer
  most often given to that same question text in training: the best any model that cannot see
  (hear, read) the media can do. A question is the text asked since the previous answer
  (:func:`~omnimodal.data.dataset.qa_turns`), so every turn of a multi-turn training
  conversation counts, and a test record is keyed by its last question.
- ``blind_model``: the same model asked the same questions with the media parts removed.

Benchmark-style task files are :mod:`omnimodal.eval.runner`'s; this is the run's own test file.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from omnimodal.data.dataset import Collator, ConversationDataset, answer_text, qa_turns
from omnimodal.data.records import Record


def normalise(text: str) -> str:
    """Exact-match normalisation: trim, lower-case, drop a final full stop."""
    return text.strip().lower().rstrip(".").strip()


def blind_baseline(records: Iterable[Record]) -> dict[str, Any]:
    """Most frequent training answer per question text, with a global fallback.

    Every assistant turn of every record counts, keyed by the text asked since the previous
    answer (:func:`~omnimodal.data.dataset.qa_turns`). One streaming pass; ties go to the
    answer seen first. A question seen with one answer so far costs one packed int (count and
    answer id), so millions of distinct questions fit.
    """
    answer_ids: dict[str, int] = {}
    single: dict[str, int] = {}  # question -> count << 32 | answer id (one distinct answer so far)
    several: dict[str, Counter] = {}  # question -> Counter of answer ids
    overall: Counter = Counter()
    for q, answer in (turn for r in records for turn in qa_turns(r)):
        a = answer_ids.setdefault(normalise(answer), len(answer_ids))
        overall[a] += 1
        if q in several:
            several[q][a] += 1
            continue
        packed = single.get(q)
        if packed is None:
            single[q] = 1 << 32 | a
        elif packed & 0xFFFFFFFF == a:
            single[q] = packed + (1 << 32)
        else:
            several[q] = Counter({packed & 0xFFFFFFFF: packed >> 32, a: 1})
            del single[q]
    answers = list(answer_ids)
    del answer_ids

    def best(q: str) -> str:
        return answers[single[q] & 0xFFFFFFFF] if q in single else answers[several[q].most_common(1)[0][0]]

    return {
        "answers": {q: best(q) for q in sorted([*single, *several])},
        "fallback": answers[overall.most_common(1)[0][0]] if overall else "",
    }


def blind_answer(baseline: dict[str, Any], record: Record) -> str:
    """The blind baseline's answer to ``record``'s last question."""
    return baseline["answers"].get(qa_turns(record)[-1][0], baseline.get("fallback", ""))


def record_modality(record: Record, part_types: dict[str, str]) -> str:
    """The modality key of a record: its media's modalities joined by '+' (or 'text')."""
    names = sorted({part_types[p["type"]] for p in record.media_parts() if p["type"] in part_types})
    return "+".join(names) or "text"


@torch.no_grad()
def predict(model, records: list[Record], batch_size: int = 64, max_new_tokens: int = 8, max_length: int | None = None, progress: bool = True) -> list[str]:
    """Greedy answers of ``model`` to the last user turn of each record."""
    ds = ConversationDataset(records, model.tokenizer, model.modalities, model.placeholder_ids, max_length, mode="generate")
    collate = Collator(model.modalities, model.tokenizer.pad_token_id, padding_side="left")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers: list[str] = []
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        media = _to_device(batch["media"], device)
        out = model.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device), media, max_new_tokens=max_new_tokens)
        answers.extend(model.tokenizer.batch_decode(model.cut_at_eos(out), skip_special_tokens=True))  # every EOS id ends an answer
    model.train(was_training)
    return answers


def _to_device(obj: Any, device) -> Any:
    """Move a media batch (tensors, dicts, lists, or objects with ``.to``) to ``device``."""
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    to = getattr(obj, "to", None)
    return to(device) if callable(to) else obj


def without_media(record: Record) -> Record:
    """The record with every media part removed (the blind_model baseline's question)."""
    messages = [{"role": m["role"], "content": [p for p in m["content"] if p["type"] == "text"] or [{"type": "text", "text": ""}]} for m in record.messages]
    return Record(messages, record.source, record.base_dir, record.kind)


def score(records: list[Record], predictions: list[str], baseline: dict[str, Any], part_types: dict[str, str], blind_predictions: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """``{modality: {kind | 'overall': {accuracy, chance, blind_frequent, blind, blind_model?, n}}}`` as fractions.

    ``blind`` is ``blind_frequent`` under the key earlier versions wrote.
    """
    groups = [(record_modality(r, part_types), r.kind or "all") for r in records]
    vocab: dict[tuple[str, str], set[str]] = defaultdict(set)
    for group, record in zip(groups, records):
        vocab[group].add(normalise(answer_text(record)))
    hits: dict[tuple[str, str], list[tuple[float, ...]]] = defaultdict(list)
    for k, (record, pred, group) in enumerate(zip(records, predictions, groups)):
        gold = normalise(answer_text(record))
        row = [normalise(pred) == gold, blind_answer(baseline, record) == gold, 1 / len(vocab[group])]
        if blind_predictions is not None:
            row.append(normalise(blind_predictions[k]) == gold)
        hits[group].append(tuple(row))
        hits[(group[0], "overall")].append(tuple(row))
    table: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (modality, kind), rows in sorted(hits.items()):
        n = len(rows)
        mean = [sum(r[i] for r in rows) / n for i in range(len(rows[0]))]
        table[modality][kind] = {"accuracy": mean[0], "chance": mean[2], "blind_frequent": mean[1], "blind": mean[1], "n": n}
        if blind_predictions is not None:
            table[modality][kind]["blind_model"] = mean[3]
    for modality in table:  # 'overall' last
        table[modality]["overall"] = table[modality].pop("overall")
    return dict(table)


def format_table(table: dict[str, dict[str, dict[str, float]]]) -> str:
    """A plain-text table: modality, kind, n, accuracy, the baselines, gain over the blind (frequent) one."""
    lines = [f"{'modality':<16} {'kind':<14} {'n':>5} {'accuracy':>9} {'chance':>7} {'blind':>7} {'blind_model':>11} {'gain':>7}"]
    lines.append("-" * len(lines[0]))
    for modality, kinds in table.items():
        for kind, row in kinds.items():
            chance = f"{row['chance']:>7.1%}" if "chance" in row else f"{'n/a':>7}"
            blind_model = f"{row['blind_model']:>11.1%}" if "blind_model" in row else f"{'n/a':>11}"
            lines.append(
                f"{modality:<16} {kind:<14} {row['n']:>5} {row['accuracy']:>9.1%} {chance} {row['blind']:>7.1%} {blind_model} "
                f"{row['accuracy'] - row['blind']:>+7.1%}"
            )
    lines.append("blind = blind_frequent (the most frequent training answer to the question); blind_model = the model without the media")
    return "\n".join(lines)


def evaluate(model, records: list[Record], baseline: dict[str, Any], batch_size: int = 64, max_new_tokens: int = 8, max_length: int | None = None, out_path: Path | None = None, blind_model: bool = True) -> dict[str, Any]:
    """Predict (and, with ``blind_model``, predict again without the media), score, optionally
    write ``eval.json``; returns the table."""
    part_types = {m.part_type: name for name, m in model.modalities.items()}
    predictions = predict(model, records, batch_size, max_new_tokens, max_length)
    blind_predictions = None
    if blind_model:
        with_media = [k for k, r in enumerate(records) if r.media_parts()]
        blind_predictions = list(predictions)
        again = predict(model, [without_media(records[k]) for k in with_media], batch_size, max_new_tokens, max_length) if with_media else []
        for k, pred in zip(with_media, again):
            blind_predictions[k] = pred
    table = score(records, predictions, baseline, part_types, blind_predictions)
    if out_path is not None:
        Path(out_path).write_text(json.dumps(table, indent=2))
    return table
