"""Dataset and collator: records -> (load, preprocess, tokenize) samples -> padded batches.

Records may be a list or a lazy source (:mod:`omnimodal.data.formats`): each is read,
validated and prepared when its sample is asked for, so a bad record is met (and, with
``on_error='skip'``, skipped and reported) when it is first loaded, never in a pre-pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from omnimodal.data.chat import IGNORE_INDEX, EncodedText, encode
from omnimodal.data.records import Record, reason_key
from omnimodal.errors import ConfigError, DataError, OmnimodalError, SampleTooLongError, SpliceError
from omnimodal.modality import MediaItem, Modality

log = logging.getLogger(__name__)


def _text(message: dict[str, Any]) -> str:
    return message.get("separator", "\n").join(p["text"] for p in message["content"] if p["type"] == "text")


def answer_text(record: Record) -> str:
    """The text of the last assistant turn (the reference answer for evaluation)."""
    last = [m for m in record.messages if m["role"] == "assistant"][-1]
    return _text(last)


def prompt_messages(record: Record) -> list[dict[str, Any]]:
    """The conversation up to (not including) its last assistant turn."""
    last = max(i for i, m in enumerate(record.messages) if m["role"] == "assistant")
    return record.messages[:last]


def question_text(record: Record) -> str:
    """The text the user wrote in the prompt (media removed, trimmed): the blind baseline's key."""
    return "\n".join(_text(m) for m in prompt_messages(record) if m["role"] != "assistant").strip()


def qa_turns(record: Record) -> list[tuple[str, str]]:
    """``(question, answer)`` per assistant turn: the text of the messages since the previous
    assistant turn (system and user; media removed, trimmed), and the answer's text.

    For a single-turn record it is ``[(question_text(record), answer_text(record))]``.
    """
    out, asked = [], []
    for m in record.messages:
        if m["role"] == "assistant":
            out.append(("\n".join(asked).strip(), _text(m)))
            asked = []
        else:
            asked.append(_text(m))
    return out


def training_texts(records: Iterable[Record]) -> Iterator[str]:
    """Each turn's question and answer text, streamed (what a scratch tokenizer learns from)."""
    for record in records:
        for question, answer in qa_turns(record):
            yield question
            yield answer


def _label_runs(labels: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` of each contiguous run of label tokens (one per answer turn)."""
    runs, start = [], None
    for i, lab in enumerate([*labels, IGNORE_INDEX]):
        if lab != IGNORE_INDEX and start is None:
            start = i
        elif lab == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def truncation_events(full: EncodedText, cut: EncodedText) -> dict[str, int]:
    """What cutting ``full`` down to ``cut`` dropped, per reason (zero counts left out)."""
    end = len(cut.input_ids)
    runs = _label_runs(full.labels)
    events = {
        "truncation.samples": 1,
        "truncation.media_dropped": len(full.spans) - cut.kept_items,
        "truncation.answer_turns_dropped": sum(1 for s, _ in runs if s >= end),
        "truncation.answer_turns_cut": sum(1 for s, e in runs if s < end < e),
        "truncation.label_tokens_dropped": sum(e - max(s, end) for s, e in runs if e > end),
    }
    return {k: v for k, v in events.items() if v}



def prepare_part(modality: Modality, part: dict[str, Any], base_dir: Path | None, source: str) -> MediaItem:
    """Load and preprocess one media ``part`` of a record; a data error names ``source``."""
    try:
        # Encoded file bytes from Arrow/Parquet rows go to `load` as they are (as an API
        # client's bytes do); a modality that cannot read bytes says so there.
        raw = part["bytes"] if "bytes" in part else modality.item_from_part(part, base_dir)
        return modality.prepare(raw, source)
    except DataError as exc:
        if source in str(exc):
            raise
        raise type(exc)(f"{source}: {exc}") from exc


class ConversationDataset(torch.utils.data.Dataset):
    """Turns records into samples; ``mode='train'`` gives labels, ``'generate'`` a prompt + answer.

    With ``on_error='skip'`` a record that fails (bad row, bad media, too long) is replaced by
    the next good one, so batches keep their size, and the sample lists what it stood in for
    under ``skipped`` (``[(source, reason)]``) for the main process to count.
    """

    def __init__(
        self,
        records: Sequence[Record],
        tokenizer,
        modalities: dict[str, Modality],
        placeholder_ids: dict[str, int],
        max_length: int | None = None,
        mode: str = "train",
        on_error: str = "raise",
        on_truncate: str = "count",
    ):
        self.records = records
        self.on_error = on_error
        self.tokenizer = tokenizer
        self.by_part_type = {m.part_type: m for m in modalities.values()}
        self.part_type_of = {m.name: m.part_type for m in modalities.values()}
        self.placeholders = {m.part_type: m.placeholder for m in modalities.values()}
        self.placeholder_ids = placeholder_ids
        self.max_length = max_length
        self.mode = mode
        if on_truncate not in ("count", "error"):
            raise ConfigError(f"data.on_truncate must be 'count' or 'error', got {on_truncate!r}")
        self.on_truncate = on_truncate

    def __len__(self) -> int:
        return len(self.records)

    def prepare_items(self, record: Record, messages: list[dict[str, Any]]) -> list[MediaItem]:
        """Load and preprocess every media part of ``messages``; errors name record and part."""
        items = []
        for i, msg in enumerate(messages):
            for j, part in enumerate(msg["content"]):
                if part["type"] == "text":
                    continue
                source = f"{record.source}: message {i} part {j} ({part['type']})"
                items.append(prepare_part(self.by_part_type[part["type"]], part, record.base_dir, source))
        return items

    def where(self, index: int) -> str:
        """``file:line`` of record ``index`` (without parsing it when the source can say)."""
        where = getattr(self.records, "where", None)
        return where(index) if where is not None else self.records[index].source

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.on_error != "skip":
            return self.sample(index)
        skipped = []
        for k in range(len(self)):
            i = (index + k) % len(self)
            try:
                sample = self.sample(i)
            except OmnimodalError as exc:
                source = self.where(i)
                skipped.append((source, reason_key(source, exc)))
                continue
            sample["skipped"] = skipped
            return sample
        raise DataError(f"every one of the {len(self)} records failed; first: {skipped[0][0]}: {skipped[0][1]}")

    def sample(self, index: int) -> dict[str, Any]:
        """Read, prepare and tokenize record ``index`` (errors name the record)."""
        record = self.records[index]
        generate = self.mode == "generate"
        messages = prompt_messages(record) if generate else record.messages
        before = {m.name: dict(m.counters) for m in self.by_part_type.values()}
        items = self.prepare_items(record, messages)
        # Events counted while preparing (e.g. clips cut to max duration) travel with the sample,
        # so they reach the main process even when data workers did the work.
        events = {
            f"{m.name}.{key}": n - before[m.name].get(key, 0)
            for m in self.by_part_type.values()
            for key, n in m.counters.items()
            if n != before[m.name].get(key, 0)
        }
        item_tokens = [(self.part_type_of[it.modality], it.num_tokens) for it in items]
        args = (self.tokenizer, messages, self.placeholders, self.placeholder_ids, item_tokens, record.source)
        if generate:
            enc = encode(*args, self.max_length, add_generation_prompt=True)
        else:
            enc = encode(*args, None)
            if self.max_length is not None and len(enc.input_ids) > self.max_length:
                cut = encode(*args, self.max_length)
                dropped = truncation_events(enc, cut)
                if self.on_truncate == "error":
                    what = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in dropped.items() if k != "truncation.samples")
                    raise SampleTooLongError(
                        f"{record.source}: {len(enc.input_ids)} tokens exceed data.max_length={self.max_length}; "
                        f"truncating would drop {what or 'only non-answer tokens'} (data.on_truncate=error; "
                        "use on_truncate=count to cut and count instead)"
                    )
                for key, n in dropped.items():
                    events[key] = events.get(key, 0) + n
                enc = cut
        return {
            "input_ids": enc.input_ids,
            "labels": enc.labels,
            "items": items[: enc.kept_items],
            "index": index,
            "source": record.source,
            "kind": record.kind,
            "answer": answer_text(record) if generate else None,
            "events": events,
        }



class Collator:
    """Pads token ids (right for training, left for generation) and batches media per modality.

    Given ``placeholder_ids`` (placeholder string -> token id, as the dataset has them), it also
    checks each sample's placeholder count against its items' pseudo-token counts (a
    :class:`~omnimodal.errors.SpliceError` naming the sample and its items) and puts the splice's
    gather/scatter indices in the batch (``batch["splice"]``, see :func:`splice_index`), so the
    model splices without a host-device sync.
    """

    def __init__(self, modalities: dict[str, Modality], pad_id: int, padding_side: str = "right", cached: frozenset[str] = frozenset(),
                 placeholder_ids: dict[str, int] | None = None):
        self.modalities = modalities
        self.pad_id = pad_id
        self.padding_side = padding_side
        self.cached = frozenset(cached)  # feature-cached modalities: item keys, not collated inputs
        ids = placeholder_ids or {}
        self.token_ids = {name: ids[m.placeholder] for name, m in modalities.items() if m.placeholder in ids}

    def __call__(self, samples: list[dict[str, Any]], indices: bool = True) -> dict[str, Any]:
        """The padded batch; ``indices=False`` leaves out :meth:`add_indices` (for a caller that
        re-lays the rows first, as packing does)."""
        length = max(len(s["input_ids"]) for s in samples)
        n = len(samples)
        input_ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, length), dtype=torch.long)
        position_ids = torch.zeros((n, length), dtype=torch.long)
        for row, s in enumerate(samples):
            k = len(s["input_ids"])
            sl = slice(length - k, length) if self.padding_side == "left" else slice(0, k)
            input_ids[row, sl] = torch.tensor(s["input_ids"])
            labels[row, sl] = torch.tensor(s["labels"])
            attention[row, sl] = 1
            position_ids[row, sl] = torch.arange(k)
        per_modality: dict[str, list[MediaItem]] = {}
        for s in samples:  # items in sample order, then conversation order: the splice's order
            for item in s["items"]:
                per_modality.setdefault(item.modality, []).append(item)
        media = {name: self.collate_media(name, items) for name, items in per_modality.items()}
        media_tokens = {name: [it.num_tokens for it in items] for name, items in per_modality.items()}
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "position_ids": position_ids,
            "media": media,
            "media_tokens": media_tokens,
            "media_sources": {name: [it.source for it in items] for name, items in per_modality.items()},
            "index": torch.tensor([s["index"] for s in samples]),
            "sources": [s["source"] for s in samples],
            "kinds": [s["kind"] for s in samples],
            "answers": [s["answer"] for s in samples],
            "events": _sum_events(s.get("events") or {} for s in samples),
            "skipped": [x for s in samples for x in s.get("skipped", ())],
        }
        if self.token_ids:
            check_placeholders(samples, input_ids, self.token_ids)
        return self.add_indices(batch) if indices else batch

    def add_indices(self, batch: dict[str, Any]) -> dict[str, Any]:
        """What the model would otherwise search the final rows for, found here on the CPU: the
        loss positions (:func:`loss_positions`) and, given placeholder ids, the splice's
        (:func:`splice_index`)."""
        batch["label_positions"], batch["label_targets"] = loss_positions(batch["labels"])
        if self.token_ids:
            batch["splice"] = splice_index(batch["input_ids"], batch["media_tokens"], self.token_ids)
        return batch

    def collate_media(self, name: str, items: list[MediaItem]) -> dict[str, Any]:
        """One modality's batch: collated features, or (feature-cached) keys and raw features."""
        if name in self.cached:
            from omnimodal.data.feature_cache import cached_media

            return cached_media(name, items)
        return self.modalities[name].collate([it.features for it in items])


def check_placeholders(samples: list[dict[str, Any]], input_ids: torch.Tensor, token_ids: dict[str, int]) -> None:
    """Each sample (row ``i`` of ``input_ids``) holds exactly as many placeholders of each modality
    as its items give pseudo-tokens; else a :class:`SpliceError` naming the sample and its items."""
    for name, token_id in token_ids.items():
        found = (input_ids == token_id).sum(1).tolist()
        for row, s in enumerate(samples):
            items = [it for it in s["items"] if it.modality == name]
            want = sum(it.num_tokens for it in items)
            if found[row] != want:
                listed = ", ".join(f"{it.source} ({it.num_tokens})" for it in items) or "none"
                raise SpliceError(
                    f"{s.get('source', f'sample {row}')}: {found[row]} {name} placeholder tokens but its {name} items "
                    f"give {want} pseudo-tokens (items: {listed})"
                )


def splice_index(input_ids: torch.Tensor, media_tokens: dict[str, list[int]], token_ids: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Where each modality's pseudo-tokens go, computed on the CPU from the final token ids.

    Per modality: ``slots`` (flat positions in ``input_ids.view(-1)``, row-major: the order of
    the items) and, for the k-th slot, the ``item`` and the position ``pos`` within that item's
    pseudo-tokens; the model gathers ``tokens.view(-1, d)[item * M + pos]`` (``M`` known from the
    projector's output shape) and scatters it into ``slots``. ``tokens`` keeps the per-item
    counts (plain ints, for the model's checks that need no device read).
    """
    flat = input_ids.reshape(-1)
    out: dict[str, dict[str, Any]] = {}
    for name, counts in media_tokens.items():
        if name not in token_ids:
            continue
        slots = (flat == token_ids[name]).nonzero().squeeze(1)
        per_item = torch.tensor(counts, dtype=torch.long)
        total = int(per_item.sum())
        if slots.numel() != total:
            raise SpliceError(f"{name}: {slots.numel()} placeholder tokens in the batch but {total} pseudo-tokens from {len(counts)} item(s) (per item: {counts})")
        starts = torch.cumsum(per_item, 0) - per_item
        item = torch.repeat_interleave(torch.arange(len(counts)), per_item)
        out[name] = {"slots": slots, "item": item, "pos": torch.arange(total) - starts[item], "tokens": list(counts)}
    return out


def loss_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a row's loss is, for logits at those positions only: ``(positions, targets)``, both
    ``[B, K]`` with ``K`` the most label tokens in any row (at least 1). ``positions[b]`` are the
    positions whose next token is a label, in order, and ``targets[b]`` those next tokens; a row
    with fewer is filled with position 0 and target ``-100``. Computed on the CPU by the collator,
    so the model needs no device read to find them."""
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    missing = (shifted == IGNORE_INDEX).to(torch.int8)
    k = max(int((1 - missing).sum(1).max()), 1) if labels.numel() else 1
    positions = torch.sort(missing, dim=1, stable=True).indices[:, :k]  # label positions first, in order
    targets = shifted.gather(1, positions)
    return positions.masked_fill(targets == IGNORE_INDEX, 0), targets


def _sum_events(dicts) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for key, n in d.items():
            total[key] = total.get(key, 0) + n
    return total
