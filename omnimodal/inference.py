"""Inference: conversations with media in, text out — one answer, a batch, or a stream.

The prompt side is the training code path: each media part -> its modality's ``prepare``
(load, preprocess, count pseudo-tokens) -> :func:`omnimodal.data.chat.encode` with the
generation prompt -> the training :class:`~omnimodal.data.dataset.Collator` (left padding,
one ``collate`` per modality) -> :meth:`OmniModel.generate` (one encoder pass per modality
per batch, then the decoder's own ``generate`` with its KV cache)::

    import omnimodal

    pipe = omnimodal.load("outputs/2026-11-22/10-00-00")          # run dir or model dir
    pipe.chat([{"role": "user", "content": [
        {"type": "image", "image": "cat.png"},                    # path, bytes, PIL, array
        {"type": "molecule", "smiles": "CCO"},
        {"type": "text", "text": "What do you see?"}]}])
    for piece in pipe.stream("Say hello", max_new_tokens=20):
        print(piece, end="")

A pipeline can also wrap a model composed in code from parts, without Hydra or a saved
directory: ``Pipeline(OmniModel(decoder, tokenizer, modalities, encoders, projectors))``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from omnimodal.data.chat import encode
from omnimodal.data.dataset import Collator
from omnimodal.data.records import validate_messages
from omnimodal.errors import ConfigError, DataError, MediaError, SampleTooLongError
from omnimodal.modality import MediaItem, Modality

Messages = list[dict[str, Any]]
Fetch = Callable[[str], bytes]


class RemoteMediaError(MediaError):
    """A media part points at a remote URL and fetching remote media is not enabled."""


MIN_SAMPLING_TEMPERATURE = 1e-4  # below it generation is greedy (as temperature=0)
SEED_RANGE = (-(2**63), 2**63 - 1)  # what torch.manual_seed takes


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate: greedy when ``temperature`` is 0 (or below 1e-4), else sampling with ``top_p``.

    ``stop`` strings end the answer (they are not included); ``seed`` makes sampling
    reproducible; ``ignore_eos`` always generates ``max_new_tokens`` (for benchmarks);
    ``top_logprobs`` (0-20) returns each generated token's log-probability (from the raw
    logits, before sampling warpers) with that many most likely alternatives.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    top_logprobs: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise ConfigError(f"seed must be a 64-bit integer, got {self.seed}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= 20:
            raise ConfigError(f"top_logprobs must be between 0 and 20, got {self.top_logprobs}")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``transformers``' ``generate``."""
        # A temperature this small is greedy in effect, and dividing logits by it overflows to inf.
        sample = self.temperature >= MIN_SAMPLING_TEMPERATURE
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": sample}
        if sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=None)
        if self.ignore_eos:
            kwargs["min_new_tokens"] = self.max_new_tokens
        if self.top_logprobs is not None:
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        return kwargs


@dataclass
class Prompt:
    """One conversation made ready for the model: a training-style sample plus its counts."""

    sample: dict[str, Any]
    source: str

    @property
    def num_tokens(self) -> int:
        """Prompt length in tokens (pseudo-tokens included)."""
        return len(self.sample["input_ids"])

    @property
    def num_media(self) -> int:
        """Number of media items in the prompt."""
        return len(self.sample["items"])


@dataclass
class Completion:
    """A generated answer: ``text``, why it ended (``stop`` or ``length``) and token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[dict[str, Any]] | None = None  # OpenAI's ``logprobs.content`` when asked for


@dataclass
class TextStream:
    """Iterator of text pieces; ``finish_reason`` and ``completion_tokens`` are set at the end.

    Call :meth:`close` (or leave a ``with`` block) to stop generating early.
    """

    _pieces: Iterator[str]
    prompt_tokens: int
    _cancel: threading.Event = field(default_factory=threading.Event)
    finish_reason: str | None = None
    completion_tokens: int = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop the generation (the worker ends after its current token)."""
        self._cancel.set()
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def text(self) -> str:
        """Consume what is left and return it joined."""
        return "".join(self)


def resolve_model_dir(path: str | Path) -> Path:
    """A model dir, or a run dir holding ``model/`` -> the model dir."""
    from omnimodal.model import CONFIG_NAME

    path = Path(path)
    if (path / "model" / CONFIG_NAME).is_file():
        return path / "model"
    return path


def load(path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Pipeline:
    """Load a saved model (or a run dir holding ``model/``) as a ready :class:`Pipeline`."""
    from omnimodal.model import OmniModel

    return Pipeline(OmniModel.from_pretrained(resolve_model_dir(path)), device=device, dtype=dtype)


class Pipeline:
    """A ready model: messages with media in, text out (single, batched or streamed).

    ``model`` is an :class:`~omnimodal.model.OmniModel`, loaded or composed from parts.
    Calls are serialised by a lock, so a pipeline may be shared between threads.
    """

    def __init__(self, model, device: str | torch.device | None = None, dtype: torch.dtype | None = None, max_length: int | None = None):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        _fit_embeddings(model)
        self.model = model.to(self.device) if dtype is None else model.to(self.device, dtype)
        self.model.eval()
        self.dtype = next(self.model.parameters()).dtype
        self.tokenizer = model.tokenizer
        self.modalities: dict[str, Modality] = dict(model.modalities)
        self.by_part_type = {m.part_type: m for m in self.modalities.values()}
        self.by_api_part_type = {t: m for m in self.modalities.values() for t in m.spec.api_part_types}
        self.placeholders = {m.part_type: m.placeholder for m in self.modalities.values()}
        self.max_length = max_length or getattr(model.decoder.config, "max_position_embeddings", None)
        self.collator = Collator(self.modalities, self.tokenizer.pad_token_id, padding_side="left")
        self.lock = threading.RLock()

    # ---- prompt side ----------------------------------------------------------------------
    def part_types(self, api: bool = False) -> dict[str, str]:
        """Accepted media part types -> modality name (``api=True``: the HTTP API's types)."""
        table = self.by_api_part_type if api else {**self.by_api_part_type, **self.by_part_type}
        return {t: m.name for t, m in table.items()}

    def raw_item(self, part: dict[str, Any], base_dir: Path | None = None, api: bool = False, fetch: Fetch | None = None) -> tuple[Modality, Any]:
        """The modality and raw item of one media part.

        ``{"type": "image", "image": value}`` gives ``value`` as is; other keys of a data-file
        part go through ``modality.item_from_part`` (paths relative to ``base_dir``); API part
        types (``image_url``, ``input_audio``...) through ``modality.item_from_api_part``.
        With ``api=True`` only API part types are accepted (no server-side paths), and an
        http(s) URL an API part resolves to is fetched with ``fetch`` or refused without it.
        """
        kind = part["type"]
        if not api and kind in self.by_part_type:
            modality = self.by_part_type[kind]
            if kind in part:
                return modality, part[kind]
            return modality, modality.item_from_part(part, base_dir)
        if kind in self.by_api_part_type:
            modality = self.by_api_part_type[kind]
            raw = modality.item_from_api_part(part)
            if isinstance(raw, str) and raw.startswith(("http://", "https://")):
                if fetch is None:
                    raise RemoteMediaError(
                        f"remote media URLs are refused ({raw[:60]!r}): send the data inline (a base64 data: URL), "
                        "or start the server with --allow-remote-media"
                    )
                raw = fetch(raw)
            return modality, raw
        valid = ", ".join(["text", *sorted(self.part_types(api))])
        raise DataError(f"unknown content part type {kind!r} (valid for this model: {valid})")

    def prepare(self, messages: Messages | str, base_dir: str | Path | None = None, source: str = "conversation", api: bool = False, max_media: int | None = None, fetch: Fetch | None = None, add_generation_prompt: bool = True) -> Prompt:
        """Validate messages, load and preprocess each media part, tokenize with the generation prompt.

        ``add_generation_prompt=False`` tokenizes the conversation as training does (its
        assistant turns labelled in ``sample["labels"]``), for scoring a given answer.

        ``messages`` is a list of ``{"role", "content"}`` (content a string or a list of parts)
        or a plain string (one user turn). Errors are :class:`~omnimodal.errors.DataError`
        naming ``source``, the message and the part.
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        messages = validate_messages(messages, source, self.part_types(api), require_answer=False)
        if max_media is not None:
            n = sum(1 for m in messages for p in m["content"] if p["type"] != "text")
            if n > max_media:
                raise DataError(f"{source}: {n} media items, more than the limit of {max_media}")
        base = Path(base_dir) if base_dir is not None else None
        items: list[MediaItem] = []
        rendered = []
        for i, msg in enumerate(messages):
            parts = []
            for j, part in enumerate(msg["content"]):
                if part["type"] == "text":
                    parts.append(part)
                    continue
                where = f"{source}: message {i} part {j} ({part['type']})"
                try:
                    modality, raw = self.raw_item(part, base, api, fetch)
                    items.append(modality.prepare(raw, where))
                except DataError as exc:
                    if where in str(exc):
                        raise
                    raise type(exc)(f"{where}: {exc}") from exc
                parts.append({"type": modality.part_type})
            rendered.append({"role": msg["role"], "content": parts})
        part_of = {m.name: m.part_type for m in self.modalities.values()}
        enc = encode(
            self.tokenizer,
            rendered,
            self.placeholders,
            self.model.placeholder_ids,
            [(part_of[it.modality], it.num_tokens) for it in items],
            source,
            self.max_length,
            add_generation_prompt=add_generation_prompt,
        )
        sample = {"input_ids": enc.input_ids, "labels": enc.labels, "items": items, "index": 0, "source": source, "kind": None, "answer": None}
        return Prompt(sample, source)

    def check_length(self, prompt: Prompt, max_new_tokens: int) -> None:
        """Raise when prompt + answer would not fit the decoder's context window."""
        if self.max_length is not None and prompt.num_tokens + max_new_tokens > self.max_length:
            raise SampleTooLongError(
                f"{prompt.source}: prompt of {prompt.num_tokens} tokens + max_new_tokens={max_new_tokens} "
                f"exceeds the model's context of {self.max_length} tokens"
            )

    def collate(self, prompts: Sequence[Prompt]) -> dict[str, Any]:
        """Left-padded batch (the training collator) moved to the model's device (floats in its dtype)."""
        samples = [dict(p.sample, index=i) for i, p in enumerate(prompts)]
        batch = self.collator(samples)
        return {
            "input_ids": batch["input_ids"].to(self.device),
            "attention_mask": batch["attention_mask"].to(self.device),
            "media": _move(batch["media"], self.device, self.dtype),
        }

    # ---- generation ---------------------------------------------------------------------------
    def options(self, options: GenerationOptions | None = None, **overrides: Any) -> GenerationOptions:
        """``options`` (default: greedy, 128 new tokens) with keyword overrides applied."""
        return replace(options or GenerationOptions(), **overrides)

    def _stop_kwargs(self, opts: GenerationOptions) -> dict[str, Any]:
        return {"stop_strings": list(opts.stop), "tokenizer": self.tokenizer} if opts.stop else {}

    @torch.no_grad()
    def generate_prompts(self, prompts: Sequence[Prompt], options: GenerationOptions | None = None, **overrides: Any) -> list[Completion]:
        """Generate for prepared prompts in one batch (one encoder pass per modality)."""
        opts = self.options(options, **overrides)
        for p in prompts:
            self.check_length(p, opts.max_new_tokens)
        with self.lock, _seeded(opts.seed, self.device):
            batch = self.collate(prompts)
            out = self.model.generate(batch["input_ids"], batch["attention_mask"], batch["media"], **opts.generate_kwargs(), **self._stop_kwargs(opts))
        sequences = out.sequences if opts.top_logprobs is not None else out
        done = [self._finish(row, p, opts) for row, p in zip(sequences.tolist(), prompts)]
        if opts.top_logprobs is not None:
            for b, completion in enumerate(done):
                completion.logprobs = self._token_logprobs(sequences[b], out.logits, b, completion.completion_tokens, opts.top_logprobs)
        return done

    def _token_logprobs(self, ids: torch.Tensor, logits: Sequence[torch.Tensor], row: int, n: int, k: int) -> list[dict[str, Any]]:
        """OpenAI's ``logprobs.content``: each generated token, its log-probability and the top ``k``."""

        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            text = self.tokenizer.decode([token_id])
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        content = []
        for t in range(min(n, len(logits))):
            logp = torch.log_softmax(logits[t][row].float(), dim=-1)
            token_id = int(ids[t])
            top = torch.topk(logp, min(k, logp.shape[-1])) if k else None
            item = entry(token_id, float(logp[token_id]))
            item["top_logprobs"] = [entry(int(i), float(v)) for v, i in zip(top.values, top.indices)] if top is not None else []
            content.append(item)
        return content

    def _finish(self, ids: list[int], prompt: Prompt, opts: GenerationOptions) -> Completion:
        eos = _eos_ids(self.tokenizer, self.model.decoder)
        n = len(ids)
        reason = "length"
        for i, t in enumerate(ids):
            if t in eos and not opts.ignore_eos:
                n, reason = i + 1, "stop"
                break
        text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
        cut = _find_stop(text, opts.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        return Completion(text, reason, prompt.num_tokens, n)

    def generate(self, conversations: Iterable[Messages | str], options: GenerationOptions | None = None, batch_size: int = 8, base_dir: str | Path | None = None, progress: bool = False, **overrides: Any) -> list[Completion]:
        """Answer many conversations, ``batch_size`` at a time (left-padded batches)."""
        from tqdm.auto import tqdm

        opts = self.options(options, **overrides)
        conversations = list(conversations)
        out: list[Completion] = []
        bar = tqdm(total=len(conversations), desc="generate", disable=not progress)
        for start in range(0, len(conversations), batch_size):
            chunk = conversations[start : start + batch_size]
            prompts = [self.prepare(c, base_dir, f"conversation {start + i}") for i, c in enumerate(chunk)]
            out.extend(self.generate_prompts(prompts, opts))
            bar.update(len(chunk))
        bar.close()
        return out

    def chat(self, messages: Messages | str, options: GenerationOptions | None = None, base_dir: str | Path | None = None, **overrides: Any) -> str:
        """The answer to one conversation (or one user message given as a string)."""
        return self.generate_prompts([self.prepare(messages, base_dir)], options, **overrides)[0].text

    def stream(self, messages: Messages | str, options: GenerationOptions | None = None, base_dir: str | Path | None = None, **overrides: Any) -> TextStream:
        """The answer to one conversation as an iterator of text pieces."""
        return self.stream_prompt(self.prepare(messages, base_dir), options, **overrides)

    def stream_prompt(self, prompt: Prompt, options: GenerationOptions | None = None, **overrides: Any) -> TextStream:
        """Stream the answer to a prepared prompt: ``generate`` runs in a thread, tokens come back
        through a queue and are decoded incrementally (stop strings held back until decided)."""
        opts = self.options(options, **overrides)
        self.check_length(prompt, opts.max_new_tokens)
        tokens: queue.Queue = queue.Queue()
        stream = TextStream(iter(()), prompt.num_tokens)
        stream._pieces = self._pieces(prompt, opts, tokens, stream)
        return stream

    def _pieces(self, prompt: Prompt, opts: GenerationOptions, tokens: queue.Queue, stream: TextStream) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        cancel = stream._cancel

        class Feed(BaseStreamer):
            first = True

            def put(self, value: torch.Tensor) -> None:
                if self.first:  # generate() first puts the prompt (empty with inputs_embeds)
                    self.first = False
                    return
                tokens.put(value.reshape(-1).tolist())

            def end(self) -> None:
                tokens.put(None)

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        def work() -> None:
            try:
                with self.lock, torch.no_grad(), _seeded(opts.seed, self.device):
                    batch = self.collate([prompt])
                    self.model.generate(
                        batch["input_ids"], batch["attention_mask"], batch["media"], streamer=Feed(),
                        stopping_criteria=StoppingCriteriaList([Cancelled()]), **opts.generate_kwargs(), **self._stop_kwargs(opts),
                    )
            except BaseException as exc:  # handed to the reading thread
                tokens.put(exc)
                tokens.put(None)

        thread = threading.Thread(target=work, name="omnimodal-stream", daemon=True)
        thread.start()
        eos = set() if opts.ignore_eos else _eos_ids(self.tokenizer, self.model.decoder)
        ids: list[int] = []
        sent = 0
        reason = None
        try:
            while reason is None:
                got = tokens.get()
                if got is None:
                    break
                if isinstance(got, BaseException):
                    raise got
                for t in got:
                    ids.append(t)
                    if t in eos:
                        reason = "stop"
                        break
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                cut = _find_stop(text, opts.stop)
                if cut is not None:
                    reason = "stop"
                    text = text[:cut]
                    ready = len(text)
                elif reason is None:
                    ready = len(text) - _held_back(text, opts.stop)
                    if text.endswith("\ufffd"):  # an incomplete multi-byte character
                        ready = min(ready, len(text) - 1)
                else:
                    ready = len(text)
                if ready > sent:
                    yield text[sent:ready]
                    sent = ready
            if reason is None:
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                cut = _find_stop(text, opts.stop)
                reason = "stop" if cut is not None or (ids and ids[-1] in eos) else "length"
                if cut is not None:
                    text = text[:cut]
                if len(text) > sent:
                    yield text[sent:]
        finally:
            cancel.set()
            stream.finish_reason = reason or ("length" if len(ids) >= opts.max_new_tokens else "stop")
            stream.completion_tokens = len(ids)
            thread.join(timeout=30)


def _move(obj: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Media batch -> device; floating tensors in the model's dtype; other ``.to``-able objects
    (e.g. torch-geometric batches) moved as they are."""
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device)
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _move(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_move(v, device, dtype) for v in obj)
    to = getattr(obj, "to", None)
    return to(device) if callable(to) else obj


def _fit_embeddings(model) -> None:
    """Grow the decoder's embeddings when placeholders were added after it was built."""
    emb = model.decoder.get_input_embeddings()
    if emb.num_embeddings < len(model.tokenizer):
        model.decoder.resize_token_embeddings(len(model.tokenizer))


def _eos_ids(tokenizer, decoder) -> set[int]:
    """Every id that ends an answer: the chat format's EOS list, the tokenizer's EOS and the
    decoder's ``generation_config`` (a list for Llama 3)."""
    from omnimodal.templates import chat_format, merge_eos

    cfg = getattr(decoder, "generation_config", None)
    return set(merge_eos(chat_format(tokenizer).eos_ids, tokenizer.eos_token_id, getattr(cfg, "eos_token_id", None)))


def _find_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that could still grow into a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Seed torch's RNG for one call without disturbing the caller's random state."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
