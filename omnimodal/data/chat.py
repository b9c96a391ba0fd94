"""Text side of a sample: chat template -> token ids -> placeholders expanded -> labels.

Assistant spans come from the rendered conversation by character offsets
(:func:`omnimodal.templates.encode_chat`: each answer through its end-of-turn token), never
from splitting strings on separators. Each media part becomes its placeholder token repeated
M times, M known before the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omnimodal.errors import SampleTooLongError, SpliceError
from omnimodal.templates import encode_chat

IGNORE_INDEX = -100


def render_messages(messages: list[dict[str, Any]], placeholders: dict[str, str]) -> list[dict[str, str]]:
    """Flatten content parts to strings: media parts become their placeholder, parts joined by
    newlines (or by the message's ``separator``: ``""`` keeps LLaVA's text verbatim)."""
    out = []
    for msg in messages:
        pieces = [p["text"] if p["type"] == "text" else placeholders[p["type"]] for p in msg["content"]]
        out.append({"role": msg["role"], "content": msg.get("separator", "\n").join(pieces)})
    return out


@dataclass
class EncodedText:
    """Token ids (placeholders expanded), labels and where each media item's span lies."""

    input_ids: list[int]
    labels: list[int]
    spans: list[tuple[int, int]]  # [start, end) of each kept media item, in order
    kept_items: int


def encode(
    tokenizer,
    messages: list[dict[str, Any]],
    placeholders: dict[str, str],
    placeholder_ids: dict[str, int],
    item_tokens: list[tuple[str, int]],
    source: str,
    max_length: int | None = None,
    add_generation_prompt: bool = False,
) -> EncodedText:
    """Tokenize a conversation and expand placeholders.

    ``item_tokens`` lists ``(part_type, num_tokens)`` for each media part in order. With
    ``max_length`` the sequence is cut from the right, never inside a media span (the cut moves
    to the span's start and the item is dropped); a sample left with no label is an error.
    """
    rendered = render_messages(messages, placeholders)
    ids, mask = encode_chat(tokenizer, rendered, add_generation_prompt, source)
    id_to_type = {placeholder_ids[placeholders[t]]: t for t in placeholders}
    positions = [i for i, t in enumerate(ids) if t in id_to_type]
    if len(positions) != len(item_tokens) or any(id_to_type[ids[p]] != t for p, (t, _) in zip(positions, item_tokens)):
        found = [id_to_type[ids[p]] for p in positions]
        raise SpliceError(
            f"{source}: placeholder tokens {found} do not match the media parts "
            f"{[t for t, _ in item_tokens]} (does a text part contain a placeholder string such as "
            f"{next(iter(placeholders.values()), '<image>')!r}?)"
        )
    new_ids: list[int] = []
    labels: list[int] = []
    spans: list[tuple[int, int]] = []
    k = 0
    for i, (tok, m) in enumerate(zip(ids, mask)):
        if k < len(positions) and i == positions[k]:
            n = item_tokens[k][1]
            spans.append((len(new_ids), len(new_ids) + n))
            new_ids.extend([tok] * n)
            labels.extend([IGNORE_INDEX] * n)
            k += 1
        else:
            new_ids.append(tok)
            labels.append(tok if m else IGNORE_INDEX)
    kept = len(spans)
    if max_length is not None and len(new_ids) > max_length:
        if add_generation_prompt:
            raise SampleTooLongError(f"{source}: prompt of {len(new_ids)} tokens exceeds max_length={max_length}")
        cut = max_length
        for start, end in spans:
            if start < cut < end:
                cut = start
        kept = sum(1 for start, _ in spans if start < cut)
        new_ids, labels, spans = new_ids[:cut], labels[:cut], spans[:kept]
        if all(lab == IGNORE_INDEX for lab in labels):
            raise SampleTooLongError(
                f"{source}: {len(ids)} text tokens + media do not fit max_length={max_length} "
                "without cutting a media span or every answer token; raise data.max_length or "
                "shorten the sample"
            )
    return EncodedText(new_ids, labels, spans, kept)
