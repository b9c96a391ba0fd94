"""Sequence packing: several conversations per row, strictly apart.

``data.packing=true`` packs each batch's conversations into as few rows of at most
``data.max_length`` tokens as first-fit decreasing allows (media pseudo-tokens included, since
they are already expanded in the token ids). A batch still holds ``data.batch_size``
conversations, so the number of optimizer steps and the schedule do not change: only the
padding goes (as in transformers' ``DataCollatorWithFlattening``, but in rows of bounded length).

Each row carries ``segment_ids`` (1, 2, ... per conversation, 0 for padding); the model turns them
into a block-diagonal causal 4-D attention mask (:func:`block_causal_mask`, through SDPA) or the
same rule as a flex-attention block mask (:func:`flex_block_mask`; ``decoder.packed_attention``
chooses), so no conversation sees another on any attention backend. Position ids restart at 0
per conversation, and the first token of each conversation carries no label, so no loss crosses
a boundary.
"""

from __future__ import annotations

from typing import Any

import torch

from omnimodal.data.chat import IGNORE_INDEX


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of total length <= ``capacity`` (first-fit decreasing).

    Deterministic: ties keep their original order. A length above ``capacity`` gets a bin of
    its own (the dataset already truncated it; this only guards against misuse).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return [sorted(b) for b in bins]


class PackingCollator:
    """Wraps the padding :class:`~omnimodal.data.dataset.Collator`: same fields, packed rows."""

    def __init__(self, collator, max_length: int):
        self.collator = collator
        self.max_length = int(max_length)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        bins = first_fit([len(s["input_ids"]) for s in samples], self.max_length)
        ordered = [samples[i] for b in bins for i in b]
        batch = self.collator(ordered, indices=False)  # media, sources... in packed order (the splice's order)
        rows = len(bins)
        length = max(sum(len(samples[i]["input_ids"]) for i in b) for b in bins)
        input_ids = torch.full((rows, length), self.collator.pad_id, dtype=torch.long)
        labels = torch.full((rows, length), IGNORE_INDEX, dtype=torch.long)
        segments = torch.zeros((rows, length), dtype=torch.long)
        positions = torch.zeros((rows, length), dtype=torch.long)
        for r, b in enumerate(bins):
            start = 0
            for k, i in enumerate(b, start=1):
                ids = samples[i]["input_ids"]
                end = start + len(ids)
                input_ids[r, start:end] = torch.tensor(ids)
                labels[r, start:end] = torch.tensor(samples[i]["labels"])
                labels[r, start] = IGNORE_INDEX  # never predicted from the previous conversation
                segments[r, start:end] = k
                positions[r, start:end] = torch.arange(len(ids))
                start = end
        batch.update(input_ids=input_ids, labels=labels, attention_mask=(segments > 0).long(),
                     position_ids=positions, segment_ids=segments)
        return self.collator.add_indices(batch)  # of the packed rows, found once


def flex_block_mask(segment_ids: torch.Tensor):
    """The same rule as :func:`block_causal_mask` as a flex-attention ``BlockMask``.

    Flex attention skips the 128 x 128 blocks the mask empties (the blocks between conversations
    and above the diagonal), where SDPA with a dense mask works through every ``L x L`` position.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    seg = segment_ids

    def mask_mod(b, h, q, kv):
        return ((seg[b, q] == seg[b, kv]) & (q >= kv) & (seg[b, q] > 0)) | (q == kv)

    rows, length = seg.shape
    return create_block_mask(mask_mod, rows, None, length, length, device=seg.device)


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4-D mask ``[B, 1, L, L]``: position i sees j iff j <= i in the same conversation.

    Padding (segment 0) sees only itself, so no attention row is empty (an all-masked row
    gives NaN under SDPA); its labels are ignored anyway.
    """
    length = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (same & causal & (segment_ids[:, :, None] > 0)) | torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]
