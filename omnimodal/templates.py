"""Chat templates and assistant label spans.

A pretrained chat decoder keeps its own template (``decoder.chat_template: auto``); a base
model without one gets omnimodal's (:data:`DEFAULT_CHAT_TEMPLATE`), said in the log.

Label spans come from the rendered conversation itself, by **character offsets**:

1. the conversation is rendered twice with the tokenizer's template: as it is, and with every
   message's content wrapped in private-use marker characters that name the message;
2. the text outside the markers must equal the plain rendering piece by piece, so each
   content's place in the plain text is known exactly (a template that trims content is
   matched on the trimmed text; anything else is refused with the message and template named);
3. the plain text is tokenized once (``add_special_tokens=False``, as ``apply_chat_template``
   does: templates that write the BOS themselves get exactly one) with offsets, and every token
   that overlaps an assistant content is labelled (on Metaspace tokenizers ``▁red`` starts one
   character before ``red``), then the tokens after it up to and including the first id of
   the EOS list: the end-of-turn token the model must learn to emit to stop.

Rendering growing prefixes is not used: Qwen3 (think blocks on the last turn only) and
Mistral v0.3 (system prompt in the last user turn) rewrite earlier parts as a chat grows.

What a run needs besides the tokenizer (template kwargs such as ``enable_thinking`` or
``date_string``, the EOS ids, the vocabulary size before omnimodal added tokens) travels with
the tokenizer as a :class:`ChatFormat` (:func:`chat_format`), so data workers, inference and
the server use the same settings; :class:`~omnimodal.model.OmniModel` saves it in
``omnimodal.json``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from omnimodal.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Role markers and the end-of-turn token used by omnimodal's default template.
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
END_TOKEN = "<|end|>"
PAD_TOKEN = "<|pad|>"

# The {% generation %} markers are not needed by omnimodal (spans come from offsets); they let
# transformers' own assistant-token mask work on a saved model too.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)

TEMPLATE_MODES = ("auto", "own", "omnimodal")
_ALIASES = {"default": "omnimodal", "tokenizer": "own"}  # the spellings of format 1 configs

# Private-use characters: never produced by a template, very unlikely in data (checked).
_OPEN, _MID, _CLOSE = "\ue000", "\ue001", "\ue002"
_MARKED = re.compile(f"{_OPEN}(\\d+){_MID}(.*?){_CLOSE}", re.DOTALL)


@dataclass
class ChatFormat:
    """Chat settings that travel with a tokenizer (see :func:`chat_format`).

    ``eos_ids``: generation stops on any of them; an assistant label span ends at the first.
    ``template_kwargs``: extra variables for the template (``enable_thinking``, ``date_string``).
    ``base_vocab_size``: tokenizer size before omnimodal added tokens (ids from it on are new).
    ``system_role``: whether the template renders a system message (``None``: not probed yet);
    without one, a system message is merged into the first user turn.
    """

    eos_ids: list[int] = field(default_factory=list)
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    base_vocab_size: int | None = None
    system_role: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for ``omnimodal.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChatFormat:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        return cls(**{k: d[k] for k in ("eos_ids", "template_kwargs", "base_vocab_size", "system_role") if k in d})


_ATTR = "omnimodal_chat_format"


def chat_format(tokenizer) -> ChatFormat:
    """The tokenizer's :class:`ChatFormat`; attached on first use from the tokenizer alone
    (EOS = its ``eos_token_id``, current size as base vocabulary)."""
    fmt = getattr(tokenizer, _ATTR, None)
    if fmt is None:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        fmt = ChatFormat(eos_ids=eos, base_vocab_size=len(tokenizer))
        setattr(tokenizer, _ATTR, fmt)
    return fmt


def set_chat_format(tokenizer, fmt: ChatFormat) -> ChatFormat:
    """Attach ``fmt`` to ``tokenizer`` (replacing any)."""
    setattr(tokenizer, _ATTR, fmt)
    return fmt


def merge_eos(*groups: Any) -> list[int]:
    """EOS ids from ints, lists or ``None``s, first appearance order, no duplicates."""
    out: list[int] = []
    for g in groups:
        for i in g if isinstance(g, (list, tuple)) else [g]:
            if i is not None and int(i) not in out:
                out.append(int(i))
    return out


def adds_bos(tokenizer) -> bool:
    """Whether plain encoding (``tokenizer("x")``) puts the BOS token first."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("x")["input_ids"]
    return bool(ids) and ids[0] == bos


def settle_template(tokenizer, mode: str, source: str) -> bool:
    """Choose the chat template per ``decoder.chat_template``; return whether omnimodal's is used.

    ``auto`` (default): the tokenizer's own template, or omnimodal's when it has none (a base
    model; said in the log). ``own``: the tokenizer's, an error without one. ``omnimodal``:
    always omnimodal's. With omnimodal's template the role and end-of-turn tokens are added as
    new special tokens (existing ids untouched), a BOS is written first when the tokenizer puts
    one on plain text, and the end-of-turn token joins the EOS list.
    """
    mode = _ALIASES.get(mode, mode)
    if mode not in TEMPLATE_MODES:
        raise ConfigError(f"decoder.chat_template must be one of {', '.join(TEMPLATE_MODES)}, got {mode!r}")
    own = _template_text(tokenizer)
    if mode == "own" and not own:
        raise ConfigError(f"decoder {source!r}: decoder.chat_template=own but its tokenizer has no chat template; use auto or omnimodal")
    if own and mode in ("auto", "own"):
        log.info("decoder %s: using its own chat template", source)
        return False
    if mode == "auto":
        log.info("decoder %s has no chat template (a base model): using omnimodal's (%s ... %s)", source, ROLE_TOKENS[2], END_TOKEN)
    from tokenizers import AddedToken

    new = [t for t in [*ROLE_TOKENS, END_TOKEN] if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
    bos = "{{ bos_token }}" if adds_bos(tokenizer) else ""
    tokenizer.chat_template = bos + DEFAULT_CHAT_TEMPLATE
    fmt = chat_format(tokenizer)
    fmt.eos_ids = merge_eos(fmt.eos_ids, tokenizer.convert_tokens_to_ids(END_TOKEN))
    return True


def _template_text(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return template or ""


def warn_on_dated_template(tokenizer) -> None:
    """Log when the template writes today's date and no ``date_string`` fixes it."""
    if "strftime_now" in _template_text(tokenizer) and "date_string" not in chat_format(tokenizer).template_kwargs:
        log.warning(
            "the chat template writes today's date (strftime_now): rendered ids change by the day; "
            "set decoder.chat_template_kwargs.date_string (e.g. '26 Jul 2024') to fix them"
        )


# ---- rendering -----------------------------------------------------------------------------
def _apply(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    kwargs = chat_format(tokenizer).template_kwargs
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)


def has_system_role(tokenizer) -> bool:
    """Probe (once per tokenizer) whether the template renders a system message."""
    fmt = chat_format(tokenizer)
    if fmt.system_role is None:
        probe = "\ue010system probe\ue010"
        try:
            text = _apply(tokenizer, [{"role": "system", "content": probe}, {"role": "user", "content": "hi"}], True)
            fmt.system_role = probe in text
        except Exception:  # noqa: BLE001 - templates refuse a system role by raising (Gemma)
            fmt.system_role = False
        if not fmt.system_role:
            log.info("the chat template has no system role: system messages are merged into the first user turn")
    return fmt.system_role


def merge_system(messages: list[dict[str, str]], source: str) -> list[dict[str, str]]:
    """Fold system messages into the first user turn that follows (``system + '\\n\\n' + user``)."""
    out: list[dict[str, str]] = []
    pending: list[str] = []
    for msg in messages:
        if msg["role"] == "system":
            pending.append(msg["content"])
            continue
        if pending and msg["role"] == "user":
            msg = {**msg, "content": "\n\n".join([*pending, msg["content"]])}
            pending = []
        out.append(msg)
    if pending:
        raise DataError(f"{source}: a system message with no user turn after it, and the chat template has no system role")
    return out


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False, source: str = "conversation") -> str:
    """The conversation (string contents) rendered by the tokenizer's template with the run's kwargs."""
    if any(m["role"] == "system" for m in messages) and not has_system_role(tokenizer):
        messages = merge_system(messages, source)
    try:
        return _apply(tokenizer, messages, add_generation_prompt)
    except Exception as exc:  # noqa: BLE001 - jinja raise_exception and friends
        raise DataError(f"{source}: the chat template refused the conversation: {exc}") from exc


def tokenize_rendered(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of rendered text, exactly as ``apply_chat_template`` tokenizes.

    ``add_special_tokens=False``: the template writes BOS itself where the model wants one
    (tokenizing again with special tokens gives Llama-3-style templates a second BOS).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("omnimodal needs a fast tokenizer (character offsets) for label spans; this one is not")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


# ---- label spans ---------------------------------------------------------------------------
def content_spans(tokenizer, messages: list[dict[str, str]], text: str, source: str) -> dict[int, tuple[int, int]]:
    """``{message index: (start, end)}``: where each message's content lies in ``text`` (the plain
    rendering of ``messages``), from a second rendering with marked contents."""
    for i, m in enumerate(messages):
        if any(c in m["content"] for c in (_OPEN, _MID, _CLOSE)):
            raise DataError(f"{source}: message {i} contains a private-use character (U+E000-E002) omnimodal reserves")
    marked_msgs = [{**m, "content": f"{_OPEN}{i}{_MID}{m['content']}{_CLOSE}"} for i, m in enumerate(messages)]
    marked = _apply(tokenizer, marked_msgs, False)
    spans: dict[int, tuple[int, int]] = {}
    pos = 0  # position in text
    last = 0  # position in marked
    hits = list(_MARKED.finditer(marked))
    intact = {int(h.group(1)) for h in hits if not any(c in h.group(2) for c in (_OPEN, _MID, _CLOSE))}
    if len(intact) < len(hits) or any(c in _MARKED.sub("", marked) for c in (_OPEN, _MID, _CLOSE)):
        broken = [f"{i} ({m['role']})" for i, m in enumerate(messages) if i not in intact]
        raise _broken(source, f"the template rewrites the content of message {', '.join(broken)}", text, 0)
    for n, hit in enumerate(hits):
        literal = marked[last : hit.start()]
        if not text.startswith(literal, pos):
            raise _broken(source, "the text around the contents differs when contents change", text, pos)
        pos += len(literal)
        i, content = int(hit.group(1)), hit.group(2)
        following = marked[hit.end() : hits[n + 1].start() if n + 1 < len(hits) else len(marked)]
        found = None
        for cand in _trimmed(content):
            if text.startswith(cand, pos) and text.startswith(following, pos + len(cand)):
                found = cand
                break
        if found is None:
            raise _broken(source, f"message {i}'s content is rewritten by the template (not only trimmed)", text, pos)
        if i in spans:
            raise _broken(source, f"message {i}'s content is rendered more than once", text, pos)
        spans[i] = (pos, pos + len(found))
        pos += len(found)
        last = hit.end()
    if marked[last:] != text[pos:]:
        raise _broken(source, "the text after the last content differs", text, pos)
    return spans


def _trimmed(content: str) -> list[str]:
    """``content`` and its whitespace-trimmed forms (templates ``| trim`` or ``lstrip('\\n')``)."""
    out = []
    for cand in (content, content.strip(), content.lstrip(), content.rstrip(), content.strip("\n"), content.lstrip("\n"), content.rstrip("\n")):
        if cand not in out:
            out.append(cand)
    return out


def _broken(source: str, why: str, text: str, pos: int) -> DataError:
    near = text[max(0, pos - 40) : pos + 40]
    return DataError(
        f"{source}: cannot find the assistant label spans in the rendered chat: {why} (near {near!r}). "
        "This chat template is not supported for training; use decoder.chat_template=omnimodal"
    )


def assistant_mask(tokenizer, messages: list[dict[str, str]], text: str, offsets: list[tuple[int, int]], ids: list[int], source: str) -> list[int]:
    """1 for each token of an assistant content and its end-of-turn tokens through the first EOS id."""
    eos = set(chat_format(tokenizer).eos_ids)
    if not eos:
        raise ConfigError("the tokenizer has no EOS token: set decoder eos (generation_config.eos_token_id) so answers can end")
    spans = content_spans(tokenizer, messages, text, source)
    starts = sorted(a for a, _ in spans.values())
    mask = [0] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i not in spans:
            raise _broken(source, f"assistant message {i} is not rendered by the template", text, 0)
        a, b = spans[i]
        nxt = next((s for s in starts if s >= b and s > a), len(text))
        k = 0
        while k < len(ids) and offsets[k][1] <= a and not (a == b and offsets[k][0] >= a):
            k += 1  # first token overlapping the content (or, for empty content, at its place)
        while k < len(ids) and offsets[k][0] < b:
            mask[k] = 1
            k += 1
        end = k
        while k < len(ids) and offsets[k][0] < nxt:
            mask[k] = 1
            if ids[k] in eos:
                break
            k += 1
        else:
            after = tokenizer.convert_ids_to_tokens(ids[end : end + 4])
            raise DataError(
                f"{source}: assistant message {i}: no end-of-turn token from the EOS list {sorted(eos)} "
                f"({tokenizer.convert_ids_to_tokens(sorted(eos))}) follows its content (tokens there: {after}). "
                "Without it the model never learns to stop: the decoder's generation_config.eos_token_id "
                "must list the template's end-of-turn token"
            )
    return mask


def encode_chat(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False, source: str = "conversation") -> tuple[list[int], list[int]]:
    """Render and tokenize a conversation of string contents: ``(ids, assistant mask)``.

    With ``add_generation_prompt`` (inference) the mask is all zeros.
    """
    if any(m["role"] == "system" for m in messages) and not has_system_role(tokenizer):
        messages = merge_system(messages, source)
    text = render(tokenizer, messages, add_generation_prompt, source)
    ids, offsets = tokenize_rendered(tokenizer, text)
    if add_generation_prompt:
        return ids, [0] * len(ids)
    return ids, assistant_mask(tokenizer, messages, text, offsets, ids, source)
