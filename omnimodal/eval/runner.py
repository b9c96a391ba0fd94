"""Run a task against a model: in-process (a :class:`~omnimodal.inference.Pipeline`) or through
any OpenAI-compatible endpoint, with the same prompts, extraction and scoring either way.

Generation is always greedy (temperature 0) with the task's ``max_tokens``. Multiple choice:

- ``generate``: the options are written into the prompt; the answer's letter is parsed
  leniently (:func:`~omnimodal.eval.metrics.extract_letter`).
- ``logprobs``: the first generated token's ``top_logprobs`` (20): the option letter with the
  highest log-probability among them wins; no letter among them counts as wrong (and is
  reported per item). Works in-process and over an endpoint that returns ``logprobs``.
- ``loglikelihood`` (in-process only: chat completions cannot score a given continuation):
  each option's text is scored as the assistant's answer, one forward pass per option,
  batched. The scored tokens are the assistant span the chat template labels in training
  (the option's tokens, plus the template's end-of-turn token unless
  ``score_end_of_turn: false``, which drops the trailing special tokens of the span).
  ``length_normalisation``: ``mean`` (default) divides the summed log-probability by the
  number of scored tokens, ``chars`` by the option's characters, ``sum`` not at all.

Baselines, computed beside every score with the same metric: ``chance`` (uniform guessing:
``1/N`` per multiple-choice item, ``(1/N)^N`` circular, 0.5 yes/no, and for open answers a
guess drawn uniformly from the task's distinct reference answers), ``blind_frequent`` (the most
frequent training answer to the same question text; needs the task's ``train`` file or the
run's stored baseline) and ``blind_model`` (the same model asked with every media part removed).
"""

from __future__ import annotations

import base64
import json
import mimetypes
import re
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnimodal.errors import ConfigError, DataError, EvaluationError
from omnimodal.eval import metrics
from omnimodal.eval.tasks import (
    Item,
    Task,
    conversation,
    expand,
    read_items,
    render_text,
    shot_items,
)

Messages = list[dict[str, Any]]
TOP_LOGPROBS = 20


@dataclass
class Answer:
    """A generated answer and, when asked for, the first token's top log-probabilities."""

    text: str
    first_top: dict[str, float] | None = None


# ---- backends ---------------------------------------------------------------------------------
class InProcess:
    """A loaded :class:`~omnimodal.inference.Pipeline`, driven in batches."""

    def __init__(self, pipeline, batch_size: int = 16, name: str | None = None):
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.name = name or "in-process"
        self.part_types = pipeline.part_types()

    def generate(self, conversations: Sequence[Messages], max_tokens: int, top_logprobs: bool = False, sources: Sequence[str] = ()) -> list[Answer]:
        """Greedy answers (the Pipeline's generation path), ``batch_size`` at a time."""
        from omnimodal.inference import GenerationOptions

        opts = GenerationOptions(max_new_tokens=max_tokens, temperature=0.0, top_logprobs=TOP_LOGPROBS if top_logprobs else None)
        out: list[Answer] = []
        for start in range(0, len(conversations), self.batch_size):
            chunk = conversations[start : start + self.batch_size]
            prompts = [self.pipeline.prepare(c, None, _src(sources, start + i)) for i, c in enumerate(chunk)]
            for done in self.pipeline.generate_prompts(prompts, opts):
                top = None
                if top_logprobs:
                    top = {t["token"]: t["logprob"] for t in done.logprobs[0]["top_logprobs"]} if done.logprobs else {}
                out.append(Answer(done.text, top))
        return out

    def loglikelihoods(self, conversation_: Messages, continuations: Sequence[str], end_of_turn: bool, source: str) -> list[tuple[float, int]]:
        """``(summed log-probability, scored tokens)`` of each continuation as the assistant's answer."""
        import torch

        from omnimodal.data.chat import IGNORE_INDEX

        pipe = self.pipeline
        prompts, spans = [], []
        special = set(pipe.tokenizer.all_special_ids)
        for k, text in enumerate(continuations):
            msgs = [*conversation_, {"role": "assistant", "content": [{"type": "text", "text": text}]}]
            prompt = pipe.prepare(msgs, None, f"{source} option {k}", add_generation_prompt=False)
            labels = prompt.sample["labels"]
            end = len(labels)
            while end > 0 and labels[end - 1] == IGNORE_INDEX:
                end -= 1
            start = end
            while start > 0 and labels[start - 1] != IGNORE_INDEX:
                start -= 1
            if not end_of_turn:
                while end > start + 1 and labels[end - 1] in special:
                    end -= 1
            if end <= start:
                raise DataError(f"{source} option {k}: the answer {text!r} has no tokens to score")
            prompts.append(prompt)
            spans.append((start, end))
        out: list[tuple[float, int]] = []
        with pipe.lock, torch.no_grad():
            for b0 in range(0, len(prompts), self.batch_size):
                group = prompts[b0 : b0 + self.batch_size]
                batch = pipe.collate(group)
                mask = batch["attention_mask"]
                positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
                logits = pipe.model(batch["input_ids"], mask, media=batch["media"], position_ids=positions).logits.float()
                logp = torch.log_softmax(logits, dim=-1)
                width = logits.shape[1]
                for r, p in enumerate(group):
                    pad = width - p.num_tokens
                    start, end = spans[b0 + r]
                    ids = torch.tensor(p.sample["input_ids"][start:end], device=logp.device)
                    rows = torch.arange(pad + start - 1, pad + end - 1, device=logp.device)
                    out.append((float(logp[r, rows, ids].sum()), end - start))
        return out


class Endpoint:
    """Any OpenAI-compatible ``/v1`` endpoint, asked with the chat completions API."""

    def __init__(self, url: str, model: str, concurrency: int = 4, timeout: float = 300.0, api_key: str | None = None):
        self.url = url.rstrip("/")
        self.model = model
        self.name = f"{model} @ {self.url}"
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.api_key = api_key
        self.part_types = _registry_part_types()

    def _post(self, body: dict[str, Any], source: str) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}/chat/completions", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise EvaluationError(f"{source}: the endpoint {self.url} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise EvaluationError(f"{source}: cannot reach the endpoint {self.url} ({exc})") from None

    def _one(self, messages: Messages, max_tokens: int, top_logprobs: bool, source: str) -> Answer:
        body: dict[str, Any] = {"model": self.model, "messages": api_messages(messages, source), "temperature": 0, "max_tokens": max_tokens}
        if top_logprobs:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        reply = self._post(body, source)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise EvaluationError(f"{source}: the endpoint's reply has no choices[0].message.content: {str(reply)[:200]}") from None
        top = None
        if top_logprobs:
            content = (choice.get("logprobs") or {}).get("content")
            if not content:
                raise EvaluationError(
                    f"{source}: the endpoint {self.url} returned no logprobs for a request with logprobs=true, "
                    "top_logprobs=20; score this task with multiple_choice.method: generate instead"
                )
            top = {t["token"]: t["logprob"] for t in content[0].get("top_logprobs") or []}
        return Answer(text, top)

    def generate(self, conversations: Sequence[Messages], max_tokens: int, top_logprobs: bool = False, sources: Sequence[str] = ()) -> list[Answer]:
        """Greedy answers, ``concurrency`` requests at a time (in the input order)."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda k: self._one(conversations[k], max_tokens, top_logprobs, _src(sources, k)), range(len(conversations))))

    def loglikelihoods(self, *args: Any, **kwargs: Any) -> list[tuple[float, int]]:
        raise ConfigError(
            "multiple_choice.method: loglikelihood needs the model in-process (chat completions cannot score a given "
            "answer); over an endpoint use method: logprobs (first-token letter log-probabilities) or generate"
        )


def _src(sources: Sequence[str], k: int) -> str:
    return sources[k] if k < len(sources) else f"item {k}"


def _registry_part_types() -> dict[str, str]:
    from omnimodal.plugins import get_registry

    return {spec.part_type: name for name, spec in get_registry().modalities.items()}


def api_messages(messages: Messages, source: str) -> list[dict[str, Any]]:
    """Data-file messages -> chat completions messages; media files inlined as the modality's
    API part (an OpenAI ``image_url`` data URL, ``input_audio`` base64, or the plugin's own part)."""
    from omnimodal.plugins import get_registry

    specs = {spec.part_type: spec for spec in get_registry().modalities.values()}
    out = []
    for i, msg in enumerate(messages):
        parts = []
        for j, part in enumerate(msg["content"]):
            if part["type"] == "text":
                parts.append({"type": "text", "text": part["text"]})
                continue
            spec = specs.get(part["type"])
            where = f"{source}: message {i} part {j} ({part['type']})"
            if spec is None:
                raise DataError(f"{where}: no installed modality takes this part type, so it cannot be sent to an endpoint")
            if "path" not in part and part["type"] in spec.api_part_types:
                parts.append(dict(part))
            elif "path" in part and "image_url" in spec.api_part_types:
                data = _read(part["path"], where)
                mime = mimetypes.guess_type(part["path"])[0] or "application/octet-stream"
                parts.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}})
            elif "path" in part and "input_audio" in spec.api_part_types:
                data = _read(part["path"], where)
                parts.append({"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": Path(part["path"]).suffix.lstrip(".").lower()}})
            else:
                raise DataError(f"{where}: cannot send this part to an endpoint (its modality {spec.name!r} takes API parts {list(spec.api_part_types)})")
        if msg["role"] != "user" and all(p["type"] == "text" for p in parts):
            out.append({"role": msg["role"], "content": "\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": msg["role"], "content": parts})
    return out


def _read(path: str, where: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{where}: cannot read {path} ({exc.strerror})") from None


# ---- predicting -------------------------------------------------------------------------------
def _choose_letter(top: dict[str, float] | None, n: int) -> int | None:
    """The option whose letter has the highest first-token log-probability among the top ones."""
    best: dict[int, float] = {}
    for token, logprob in (top or {}).items():
        t = token.strip().strip("(").rstrip(".):").strip()
        if len(t) == 1 and t.upper() in metrics.LETTERS[:n] and t.isupper():
            k = metrics.LETTERS.index(t)
            best[k] = max(best.get(k, float("-inf")), logprob)
    return max(best, key=best.get) if best else None


def predict(task: Task, items: list[Item], backend, shots: list[Item], blind: bool = False, progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """One prediction per item: ``{"prediction", "choice"?, "score", ...}``, in item order."""
    mc = task.multiple_choice
    out: list[dict[str, Any]] = []
    chunk = max(getattr(backend, "batch_size", 16), getattr(backend, "concurrency", 1) * 4)
    for start in range(0, len(items), chunk):
        group = items[start : start + chunk]
        convs = [conversation(task, it, shots, blind) for it in group]
        sources = [it.source for it in group]
        if task.metric == "multiple_choice" and mc.method == "loglikelihood":
            for it, conv in zip(group, convs):
                scored = backend.loglikelihoods(conv, it.options, mc.score_end_of_turn, it.source)
                values = [_normalised(s, n, len(o), mc.length_normalisation) for (s, n), o in zip(scored, it.options)]
                choice = max(range(len(values)), key=values.__getitem__)  # ties: the first option
                out.append({"prediction": it.options[choice], "choice": choice, "option_scores": values, "score": metrics.multiple_choice_match(choice, it.gold)})
        else:
            first = task.metric == "multiple_choice" and mc.method == "logprobs"
            for it, ans in zip(group, backend.generate(convs, task.max_tokens, first, sources)):
                out.append(score_answer(task, it, ans))
        if progress:
            progress(len(group))
    return out


def _normalised(total: float, tokens: int, chars: int, how: str) -> float:
    if how == "mean":
        return total / max(tokens, 1)
    if how == "chars":
        return total / max(chars, 1)
    return total


def extract(task: Task, text: str) -> str | None:
    """The answer inside a generated text by the task's ``answer_regex`` (None: no match)."""
    if task.answer_regex is None:
        return text
    match = re.search(task.answer_regex, text, re.DOTALL)
    if match is None:
        return None
    return match.group(1) if match.groups() and match.group(1) is not None else match.group(0)


def score_answer(task: Task, item: Item, answer: Answer, apply_regex: bool = True) -> dict[str, Any]:
    """Extract and score one generated answer."""
    row: dict[str, Any] = {"prediction": answer.text}
    if apply_regex and task.answer_regex is not None and answer.first_top is None:
        found = extract(task, answer.text)
        row["extracted"] = found
        if found is None:
            row["note"] = "answer_regex did not match"
        answer = Answer(found or "", answer.first_top)
    if task.metric == "multiple_choice":
        if answer.first_top is not None:
            choice = _choose_letter(answer.first_top, len(item.options))
            row.update(prediction=metrics.LETTERS[choice] if choice is not None else "", generated=answer.text)
            if choice is None:
                row["note"] = "no option letter among the first token's top_logprobs"
        else:
            choice = metrics.extract_letter(answer.text, item.options)
        row.update(choice=choice, score=metrics.multiple_choice_match(choice, item.gold))
    else:
        row["score"] = metrics.score_text(task.metric, answer.text, item.references, task.tolerance)
        if task.metric == "yes_no":
            row["yes_no"] = metrics.extract_yes_no(answer.text)
    return row


def score_text_prediction(task: Task, item: Item, text: str) -> dict[str, Any]:
    """Score a text prediction (a baseline's) exactly as a generated answer is scored."""
    return score_answer(task, item, Answer(text), apply_regex=False)


# ---- aggregation and baselines ----------------------------------------------------------------
def summarise(task: Task, items: list[Item], rows: list[dict[str, Any]]) -> dict[str, float]:
    """Task-level numbers: ``score`` (the headline), plus accuracy/circular or P/R/F1 as apt."""
    n = len(rows) or 1
    mean = sum(r["score"] for r in rows) / n
    if task.metric == "multiple_choice" and task.multiple_choice.circular:
        by_item: dict[str, list[float]] = defaultdict(list)
        for it, r in zip(items, rows):
            by_item[it.id].append(r["score"])
        circular = sum(all(s == 1.0 for s in v) for v in by_item.values()) / (len(by_item) or 1)
        return {"score": circular, "accuracy": mean, "circular_accuracy": circular}
    if task.metric == "yes_no":
        summary = metrics.yes_no_summary([r.get("yes_no") for r in rows], [metrics.extract_yes_no(it.references[0]) for it in items])
        return {"score": summary["accuracy"], **summary}
    return {"score": mean}


def chance(task: Task, items: list[Item]) -> dict[str, float]:
    """Expected numbers of uniform guessing."""
    if task.metric == "multiple_choice":
        plain = sum(1 / len(it.options) for it in items) / len(items)
        if task.multiple_choice.circular:
            per_item = {it.id: (1 / len(it.options)) ** len(it.options) for it in items}
            circular = sum(per_item.values()) / len(per_item)
            return {"score": circular, "accuracy": plain, "circular_accuracy": circular}
        return {"score": plain}
    if task.metric == "yes_no":
        return {"score": 0.5, "accuracy": 0.5}
    vocabulary = {metrics.normalise_answer(it.references[0]) for it in items}
    total = 0.0
    for it in items:
        if task.metric in ("exact_match", "vqa_accuracy"):  # closed form: only the guesses among the references score
            counts = Counter(metrics.normalise_answer(r) for r in it.references)
            hits = [min(c / 3.0, 1.0) if task.metric == "vqa_accuracy" else 1.0 for r, c in counts.items() if r in vocabulary]
            total += sum(hits) / len(vocabulary)
        else:
            total += sum(metrics.score_text(task.metric, v, it.references, task.tolerance) for v in vocabulary) / len(vocabulary)
    return {"score": total / len(items)}


def frequent_answers(task: Task, part_types: dict[str, str]) -> tuple[dict[str, str], str] | None:
    """Most frequent training answer per question text (and overall), from the task's ``train``."""
    if not task.train:
        return None
    per_question: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for f in task.train:
        for it in read_items(f, part_types, task.metric, options_required=False, fmt=task.format):
            a = it.references[0]
            per_question[it.question][a] += 1
            overall[a] += 1
    return {q: c.most_common(1)[0][0] for q, c in per_question.items()}, overall.most_common(1)[0][0]


@dataclass
class RunOptions:
    """What to compute beside the model's score."""

    blind_model: bool = True
    stored_baseline: dict[str, Any] | None = None  # a run's stored blind baseline (question -> answer)
    progress: bool = True


def run_task(task: Task, backend, options: RunOptions | None = None) -> dict[str, Any]:
    """Ask every item of ``task``, score it, and compute the baselines; a JSON-ready result."""
    from tqdm import tqdm

    options = options or RunOptions()
    items = [it for f in task.data for it in read_items(f, backend.part_types, task.metric, fmt=task.format)]
    if task.limit is not None:
        items = items[: int(task.limit)]
    seen: dict[str, str] = {}
    for it in items:
        if it.id in seen:
            raise DataError(f"{it.source}: id {it.id!r} is used twice (first at {seen[it.id]}); ids name items in results and comparisons")
        seen[it.id] = it.source
    items = expand(items, task)
    shots = shot_items(task, backend.part_types)
    with_media = [k for k, it in enumerate(items) if it.has_media]
    total = len(items) + (len(with_media) if options.blind_model else 0)
    with tqdm(total=total, desc=f"eval {task.name}", unit="q", disable=not options.progress, leave=False) as bar:
        rows = predict(task, items, backend, shots, progress=bar.update)
        blind_rows: list[dict[str, Any]] | None = None
        if options.blind_model:
            blind_rows = [dict(r) for r in rows]  # items without media: the same question
            media_items = [items[k] for k in with_media]
            for k, row in zip(with_media, predict(task, media_items, backend, shots, blind=True, progress=bar.update)):
                blind_rows[k] = row
    baselines: dict[str, Any] = {"chance": chance(task, items)}
    freq = frequent_answers(task, backend.part_types)
    if freq is None and options.stored_baseline:
        freq = (options.stored_baseline.get("answers", {}), options.stored_baseline.get("fallback", ""))
    freq_rows = None
    if freq is None:
        baselines["blind_frequent"] = {"unavailable": "no training data: give the task a 'train' file"}
    else:
        answers, fallback = freq
        freq_rows = [score_text_prediction(task, it, answers.get(it.question, fallback)) for it in items]
        baselines["blind_frequent"] = summarise(task, items, freq_rows)
    if blind_rows is not None:
        baselines["blind_model"] = summarise(task, items, blind_rows)
    else:
        baselines["blind_model"] = {"unavailable": "not computed (--no-blind-model)"}
    per_item = []
    for k, (it, row) in enumerate(zip(items, rows)):
        entry = {"id": it.id, "rotation": it.rotation, "source": it.source, "kind": it.kind, "question": render_text(task, it),
                 "references": it.references, **({"options": it.options, "gold": it.gold} if it.options else {}), **row}
        if blind_rows is not None:
            entry["blind_model"] = {k2: blind_rows[k][k2] for k2 in ("prediction", "score") if k2 in blind_rows[k]}
        if freq_rows is not None:
            entry["blind_frequent"] = {k2: freq_rows[k][k2] for k2 in ("prediction", "score")}
        per_item.append(entry)
    mc = task.multiple_choice
    return {
        "task": task.name, "task_file": str(task.path), "model": backend.name, "metric": task.metric,
        "n": len({(it.id) for it in items}), "n_asked": len(items),
        "settings": {"max_tokens": task.max_tokens, "temperature": 0.0, "few_shot": len(shots), "tolerance": task.tolerance,
                     **({"multiple_choice": {"method": mc.method, "circular": mc.circular, "length_normalisation": mc.length_normalisation,
                                             "score_end_of_turn": mc.score_end_of_turn}} if task.metric == "multiple_choice" else {})},
        "scores": summarise(task, items, rows), "by_kind": by_kind(task, items, rows), "baselines": baselines, "items": per_item,
    }


def by_kind(task: Task, items: list[Item], rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The model's numbers per item ``kind`` (empty when the data has no kinds)."""
    kinds = sorted({it.kind for it in items if it.kind})
    out = {}
    for kind in kinds:
        picked = [(it, r) for it, r in zip(items, rows) if it.kind == kind]
        out[kind] = {**summarise(task, [it for it, _ in picked], [r for _, r in picked]), "n": len({it.id for it, _ in picked})}
    return out
