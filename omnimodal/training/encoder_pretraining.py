"""Encoder pre-training: encoders and projectors learn the training set's short answers first.

From scratch, an encoder learns slowly through the language model's gradient: on the molecule
demo a GINE trained that way still read "does it contain nitrogen?" at chance after 3 epochs,
while the same encoder and projector trained for two epochs against one linear answer head per
question read it at 100%, and a language model trained on top of them then answered it at
100% too (docs/benchmarks.md, "Demo speed: what was tried"). So before the language model trains, each modality
whose encoder or projector trains here gets ``pretrain_encoders.epochs`` epochs of that: the
item's pseudo-tokens, pooled by attention with one learned query per question (as the language
model reads them), -> one linear head per question -> cross-entropy over the question's
answers. Only the queries and heads are thrown away; what the encoder and projector learned
stays.

The labels come from the training records themselves: a record qualifies when it is about one
medium (in its first user turn) and each user turn is answered by one text-only assistant turn;
each turn is a question (a one-question record's ``kind`` when it has one, else the user's
text), kept when it has between 2 and ``max_answers`` distinct answers in the training set.
What does not qualify is counted by reason and reported, never guessed at. Each distinct medium
is one item, encoded once per step for every question asked about it. A medium that fails to
load stops the run (the error names its record), or under ``data.on_error=skip`` is left out of
pre-training and counted in the run's skip report with its reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from omnimodal.data.dataset import prepare_part
from omnimodal.data.records import Record, SkipReport, reason_key
from omnimodal.data.transport import for_transport
from omnimodal.errors import ConfigError, DataError, OmnimodalError
from omnimodal.training.datamodule import torch_threads_fill_the_cpu
from omnimodal.training.module import adamw

log = logging.getLogger(__name__)


@dataclass
class AnswerSet:
    """One modality's records seen as classification: each medium once, with its
    ``(question, answer)`` index pairs (every record and turn that asks about it)."""

    items: list[tuple[Record, dict[str, Any], list[tuple[int, int]]]] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    @property
    def labels(self) -> int:
        """How many (medium, question, answer) rows there are."""
        return sum(len(qa) for _, _, qa in self.items)


def _question_turns(record: Record) -> tuple[dict[str, Any], list[tuple[str, str]]] | str:
    """``(media part, [(question, answer), ...])`` of a record about one medium, or why not.

    The medium sits in the first user turn; every user turn is answered by one text-only
    assistant turn. A one-question record's question is its ``kind`` when it has one (so
    differently worded questions of a kind share a head), else the user's text.
    """
    turns = [m for m in record.messages if m["role"] != "system"]
    roles = [m["role"] for m in turns]
    if not turns or len(turns) % 2 or roles != ["user", "assistant"] * (len(turns) // 2):
        return "not user turns each answered once"
    media = [p for m in turns for p in m["content"] if p["type"] != "text"]
    if len(media) != 1 or media[0] not in turns[0]["content"]:
        return "not exactly one medium"
    pairs = []
    for user, assistant in zip(turns[::2], turns[1::2]):
        question = " ".join(p["text"] for p in user["content"] if p["type"] == "text").strip()
        pairs.append((question, " ".join(p["text"] for p in assistant["content"]).strip()))
    if len(pairs) == 1 and record.kind:
        pairs = [(record.kind, pairs[0][1])]
    return media[0], pairs


def answer_sets(records: Any, part_types: dict[str, str], max_answers: int = 32) -> tuple[dict[str, AnswerSet], Counter]:
    """Group the training records by modality into :class:`AnswerSet` s, one item per distinct
    medium (same part, same base folder); also count the question rows left out, by reason.
    ``part_types`` maps a part type to its modality's name."""
    skipped: Counter = Counter()
    found: list[tuple[str, Record, dict[str, Any], str, str, str]] = []
    for record in records:
        got = _question_turns(record)
        if isinstance(got, str):
            skipped[got] += 1
            continue
        part, pairs = got
        medium = f"{record.base_dir}\0{json.dumps(part, sort_keys=True, default=str)}"  # same part, same folder: one item
        found += [(part_types[part["type"]], record, part, medium, question, answer) for question, answer in pairs]
    answers_of: dict[tuple[str, str], set[str]] = {}
    for name, _, _, _, question, answer in found:
        answers_of.setdefault((name, question), set()).add(answer)
    sets: dict[str, AnswerSet] = {}
    index: dict[tuple[str, str, str], int] = {}  # (modality, "q" or "a", text) -> its position
    item_of: dict[tuple[str, str], int] = {}  # (modality, medium) -> item position
    for name, record, part, medium, question, answer in found:
        n = len(answers_of[(name, question)])
        if not 2 <= n <= max_answers:
            skipped[f"its question has {'one answer' if n < 2 else f'more than {max_answers} distinct answers'}"] += 1
            continue
        s = sets.setdefault(name, AnswerSet())
        for kind, text, names in (("q", question, s.questions), ("a", answer, s.answers)):
            if (name, kind, text) not in index:
                index[(name, kind, text)] = len(names)
                names.append(text)
        if (name, medium) not in item_of:
            item_of[(name, medium)] = len(s.items)
            s.items.append((record, part, []))
        s.items[item_of[(name, medium)]][2].append((index[(name, "q", question)], index[(name, "a", answer)]))
    return sets, skipped


class _Items(torch.utils.data.Dataset):
    """An answer set's media, prepared by the modality (errors name the record). Under
    ``on_error='skip'`` a medium that fails comes back as ``(i, None, (record source, reason))``."""

    def __init__(self, modality: Any, items: list[tuple[Record, dict[str, Any], list[tuple[int, int]]]], on_error: str = "raise"):
        self.modality, self.items, self.on_error = modality, items, on_error

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, dict[str, Any] | None, Any]:
        record, part, pairs = self.items[i]
        source = f"{record.source} ({part['type']})"
        try:
            item = prepare_part(self.modality, part, record.base_dir, source)
        except OmnimodalError as exc:
            if self.on_error != "skip":
                raise
            return i, None, (record.source, reason_key(source, exc))  # the record, as the run's report counts it
        return i, item.features, pairs


def _collate(modality: Any, batch: list[tuple[int, dict[str, Any], list[tuple[int, int]]]]) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The media batch, then one row per question: its medium's position, question, answer."""
    rows = [(i, q, a) for i, (_, _, pairs) in enumerate(batch) for q, a in pairs]
    media, question, answer = (torch.tensor(column) for column in zip(*rows))
    return modality.collate([b[1] for b in batch]), media, question, answer


def _nbytes(features: dict[str, Any]) -> int:
    return sum(v.nbytes for v in features.values() if isinstance(v, torch.Tensor))


def _batches(dataset: _Items, order: list[int], batch_size: int, num_workers: int, kept: dict[int, Any] | None):
    """This epoch's batches (lists of prepared items) in ``order``: from ``kept`` when it holds
    every item, else prepared by the data workers (and added to ``kept`` while it is not None)."""
    if kept is not None and len(kept) == len(dataset):
        for start in range(0, len(order), batch_size):
            yield [kept[i] for i in order[start:start + batch_size]]
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=num_workers, collate_fn=_as_one_buffer)
    for batch in loader:
        yield batch["items"]


def _as_one_buffer(batch: list[Any]) -> Any:
    """A worker's list of prepared items, its small tensors handed over in one buffer (not one
    shared-memory descriptor each: a molecule batch holds 160)."""
    return for_transport({"items": batch})


def _own(item: tuple[int, dict[str, Any] | None, Any]) -> tuple[int, dict[str, Any] | None, Any]:
    """An item with its own tensors (not views of a batch's shared buffer) to keep."""
    i, features, pairs = item
    if features is None:  # a skipped medium: kept as skipped, not loaded again
        return item
    return i, {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in features.items()}, pairs


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def pretrain_encoders(model: Any, records: Any, cfg: dict[str, Any], seed: int = 0, num_workers: int = 0,
                      device: torch.device | str | None = None, on_error: str = "raise",
                      report: SkipReport | None = None) -> dict[str, Any]:
    """Train each modality's trainable encoder and projector against answer heads for
    ``cfg["epochs"]`` epochs (see the module docstring) on ``device`` (default: where they are);
    return a summary per modality.

    ``cfg``: ``epochs``, ``lr``, ``batch_size``, ``max_answers``, ``modalities`` (names to
    pre-train; null: every one whose encoder or projector trains, unless its own config says
    ``pretrain: false``). A modality to pre-train with no qualifying record is an error (the
    reasons counted); one whose encoder and projector are both frozen is left alone.
    ``on_error='skip'``: media that fail to load are left out and counted in ``report``.
    """
    epochs = int(cfg.get("epochs") or 0)
    if epochs <= 0:
        return {}
    part_types = {m.part_type: name for name, m in model.modalities.items()}
    sets, skipped = answer_sets(records, part_types, int(cfg.get("max_answers", 32)))
    if skipped:
        log.info("encoder pre-training: %d training records or questions left out (%s)", sum(skipped.values()),
                 "; ".join(f"{why}: {n}" for why, n in skipped.most_common()))
    width = model.decoder.get_input_embeddings().weight.shape[1]
    summary: dict[str, Any] = {}
    chosen = cfg.get("modalities")
    unknown = sorted(set(chosen or ()) - set(model.modalities))
    if unknown:
        raise ConfigError(f"pretrain_encoders.modalities: {unknown} not among the run's modalities {sorted(model.modalities)}")
    for name in model.modalities:
        if chosen is not None and name not in chosen:
            continue
        if chosen is None and model.modalities[name].cfg.get("pretrain") is False:
            continue  # the modality's own switch (modalities.<name>.pretrain); an explicit list overrides it
        if model.modalities[name].cfg.get("shared_with"):
            continue  # its owner's encoder and projector are pre-trained under the owner's name
        if name in (getattr(model, "feature_caches", None) or {}):
            raise ConfigError(f"pretrain_encoders: {name} reads its features from data.feature_cache, which pre-training "
                              "does not; set pretrain_encoders.epochs=0 or leave it out of pretrain_encoders.modalities")
        encoder, projector = model.encoders[name], model.projectors[name]
        if device is not None:
            encoder.to(device)
            projector.to(device)
        params = _trainable(encoder) + _trainable(projector)
        if not params:
            continue
        answer_set = sets.get(name)
        if answer_set is None:
            reasons = "; ".join(f"{why}: {n}" for why, n in skipped.most_common()) or "no records"
            raise ConfigError(f"pretrain_encoders.epochs={epochs}: no {name} training record has a short-answer question "
                              f"to pre-train on ({reasons}); set pretrain_encoders.epochs=0")
        summary[name] = _pretrain_one(model.modalities[name], encoder, projector, params, answer_set, width, cfg, epochs, seed,
                                      num_workers, on_error, report if report is not None else SkipReport())
    return summary


def _pretrain_one(modality: Any, encoder: nn.Module, projector: nn.Module, params: list[nn.Parameter], answer_set: AnswerSet,
                  width: int, cfg: dict[str, Any], epochs: int, seed: int, num_workers: int, on_error: str,
                  report: SkipReport) -> dict[str, Any]:
    start = time.perf_counter()
    n_q, n_a = len(answer_set.questions), len(answer_set.answers)
    generator = torch.Generator().manual_seed(seed)
    device = params[0].device
    head = nn.Linear(width, n_q * n_a, device=device)
    queries = nn.Parameter(torch.zeros(n_q, width, device=device))  # uniform attention at first
    extra = [queries, *head.parameters()]
    # Answers that never go with a question stay out of its softmax.
    allowed = torch.zeros(n_q, n_a, dtype=torch.bool, device=device)
    for _, _, pairs in answer_set.items:
        for q, a in pairs:
            allowed[q, a] = True
    # PyTorch's fused AdamW, as the language model's: the molecule demo's pre-training 29.1 / 29.6 s
    # against 31.9 / 34.1 s with the per-parameter loop (2-core CPU, alternating runs).
    optimizer = adamw(params + extra, lr=float(cfg.get("lr", 5e-4)), weight_decay=0.01)
    dataset = _Items(modality, answer_set.items, on_error)
    skipped: set[int] = set()
    if device.type == "cpu" and torch_threads_fill_the_cpu():
        # Training on every core already: a worker would only take turns with the compute threads
        # (the demo's 3 molecule epochs: 19 s in-process, 28-32 s with one worker on 2 cores).
        num_workers = 0
    # Prepared media stay in memory after the first epoch while they fit in memory_mb (the later
    # epochs then decode nothing); past it they are dropped and every epoch prepares them again.
    budget = float(cfg.get("memory_mb", 2048)) * 2**20
    kept: dict[int, Any] | None = {} if epochs > 1 and budget > 0 else None
    kept_bytes = 0
    hits = seen = 0  # modules keep the modes the stage gave them (frozen parts in eval mode)
    for _ in range(epochs):
        hits = seen = 0  # the last epoch's running accuracy is reported
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for batch in _batches(dataset, order, int(cfg.get("batch_size", 32)), num_workers, kept):
            if kept is not None and len(kept) < len(dataset):
                kept.update((b[0], _own(b)) for b in batch)
                kept_bytes += sum(_nbytes(b[1]) for b in batch if b[1] is not None)
                if kept_bytes > budget:
                    kept = None
            for i, _, (source, reason) in (b for b in batch if b[1] is None):
                skipped.add(i)
                report.add(source, reason)
            batch = [b for b in batch if b[1] is not None]
            if not batch:
                continue
            features, media, question, answer = _collate(modality, batch)
            features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
            media, question, answer = media.to(device), question.to(device), answer.to(device)
            tokens, mask = projector(*encoder(**features))
            tokens, mask = tokens[media], mask[media]  # one row per question asked about the medium
            scores = (tokens @ queries[question].unsqueeze(-1)).squeeze(-1) / width**0.5
            attention = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            pooled = (attention.unsqueeze(-1) * tokens).sum(1)
            logits = head(pooled).view(-1, n_q, n_a)[torch.arange(len(question), device=device), question]
            logits = logits.masked_fill(~allowed[question], float("-inf"))
            loss = nn.functional.cross_entropy(logits.float(), answer)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params + extra, 1.0)
            optimizer.step()
            hits += int((logits.argmax(-1) == answer).sum())
            seen += len(answer)
    optimizer.zero_grad(set_to_none=True)
    if len(skipped) == len(dataset):
        raise DataError(f"encoder pre-training, {modality.name}: every one of its {len(dataset)} media failed to load "
                        f"(data.on_error=skip); see the skip report above")
    seconds = time.perf_counter() - start
    result = {"epochs": epochs, "media": len(answer_set.items) - len(skipped), "media_skipped": len(skipped), "labels": answer_set.labels, "questions": n_q, "answers": n_a,
              "train_accuracy_last_epoch": hits / max(seen, 1), "seconds": round(seconds, 1),
              "media_kept_in_memory_mb": round(kept_bytes / 2**20, 1) if kept is not None else None}
    log.info("encoder pre-training, %s: %d media (%d skipped), %d questions asked of them (%d kinds), %d epoch(s), "
             "train accuracy %.1f%% in the last, %.1f s", modality.name, result["media"], len(skipped), answer_set.labels, n_q, epochs, 100 * result["train_accuracy_last_epoch"], seconds)
    return result
