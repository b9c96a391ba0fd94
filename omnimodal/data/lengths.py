"""Cheap length estimates per conversation, for length-grouped batching (``data.group_by_length``).

A conversation's estimated length is computed once, without loading any media and without
rendering the chat template:

- the tokens of its messages' text as the template gets it (media parts as their placeholder
  token, parts joined by the message's separator), the tokenizer on that text alone, batched;
- each placeholder replaced by its item's pseudo-token count as the modality can tell it from
  metadata (:meth:`~omnimodal.modality.Modality.estimate_tokens`: a ViT image's fixed count, an
  audio clip's file header, a SMILES string's atoms), 0 when it cannot tell (counted, logged);
- capped at ``data.max_length`` (longer conversations are cut to it).

The chat template's own tokens (role markers, a few per message) are left out. Grouping only
needs lengths that order conversations about right; nothing is sized from them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import numpy as np

from omnimodal.data.chat import render_messages
from omnimodal.errors import OmnimodalError

log = logging.getLogger(__name__)


def media_estimate(dataset: Any, part: dict[str, Any], base_dir: Any) -> int | None:
    """One media part's pseudo-token estimate, or ``None`` when its modality cannot tell cheaply."""
    modality = dataset.by_part_type[part["type"]]
    try:
        raw = part["bytes"] if "bytes" in part else modality.item_from_part(part, base_dir)
    except OmnimodalError:
        return None  # a bad part is reported when its sample is loaded
    n = modality.estimate_tokens(raw)
    return None if n is None else int(n)


def estimate_lengths(dataset: Any, chunk: int = 512) -> np.ndarray:
    """Estimated token length of every conversation of a
    :class:`~omnimodal.data.dataset.ConversationDataset` (see the module docstring).

    A record that fails to read raises (``on_error='raise'``), as it would when loaded; under
    ``on_error='skip'`` it gets length 0 (its sample is replaced and reported when loaded).
    """
    start = time.perf_counter()
    records, tokenizer = dataset.records, dataset.tokenizer
    lengths = np.zeros(len(records), dtype=np.int64)
    unknown: Counter = Counter()
    for lo in range(0, len(records), chunk):
        texts, media, rows = [], [], []
        for i in range(lo, min(lo + chunk, len(records))):
            try:
                record = records[i]
            except OmnimodalError:
                if dataset.on_error != "skip":
                    raise
                continue
            # Each message as the template gets it (media parts as their one-token placeholder,
            # parts joined by the message's separator); a placeholder becomes its item's tokens.
            texts.append("\n".join(m["content"] for m in render_messages(record.messages, dataset.placeholders)))
            parts = record.media_parts()
            total = -len(parts)
            for p in parts:
                n = media_estimate(dataset, p, record.base_dir)
                if n is None:
                    unknown[dataset.by_part_type[p["type"]].name] += 1
                total += n or 0
            media.append(total)
            rows.append(i)
        if rows:
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
            lengths[rows] = np.asarray([len(t) for t in ids]) + np.asarray(media)
    if dataset.max_length:
        np.minimum(lengths, int(dataset.max_length), out=lengths)
    without = "".join(f"; {n} {name} item(s) without a cheap estimate counted as 0 tokens" for name, n in sorted(unknown.items()))
    log.info("group_by_length: estimated the lengths of %d conversations in %.1fs (median %d, max %d tokens%s)",
             len(lengths), time.perf_counter() - start, int(np.median(lengths)) if len(lengths) else 0,
             int(lengths.max()) if len(lengths) else 0, without)
    return lengths
