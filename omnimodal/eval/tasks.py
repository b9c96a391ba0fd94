"""Task files: a small YAML that says what to ask, how to read the answer and how to score it.

```yaml
name: shapes-mc                  # default: the file's stem
data: test.jsonl                 # relative to this YAML; the training data format
format: auto                     # any format training reads: auto | omnimodal (jsonl) | llava | messages | hf | parquet
train: train.jsonl               # optional: gives the blind_frequent baseline
metric: multiple_choice          # exact_match | vqa_accuracy | multiple_choice | numeric | yes_no
prompt: "{question}\n{options}\nAnswer with the option's letter."
answer_regex: null               # optional: the answer is this regex's first group (or match)
                                 # in the generated text; no match scores as no answer
max_tokens: 8
tolerance: 0.05                  # numeric only
limit: null                      # evaluate the first N items only
few_shot:                        # optional: examples asked and answered before each item
  - {question: "What is 2+2?", answer: "4"}
  # or {file: dev.jsonl, n: 2}: the first n items of a data file (media included)
multiple_choice:
  method: generate               # generate | loglikelihood (in-process) | logprobs (first token)
  circular: true                 # CircularEval: every rotation must be right
  length_normalisation: mean     # loglikelihood: mean | sum | chars
  score_end_of_turn: true        # loglikelihood: score the template's end-of-turn token too
```

A data line is a training record (``messages`` ending with the reference answer) plus
optional fields: ``answers`` (several references, e.g. VQA's human answers), ``options`` and
``answer`` (a letter, an index or the option's text) for multiple choice, ``id``, ``kind``.
The prompt template fills ``{question}`` (the last user turn's text), ``{options}`` ("A. ...",
one per line) and any other top-level field of the line; the last user turn's media parts
stay where they were.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omnimodal.errors import ConfigError, DataError
from omnimodal.eval.metrics import LETTERS, METRICS

MC_METHODS = ("generate", "loglikelihood", "logprobs")
NORMALISATIONS = ("mean", "sum", "chars")
_TASK_KEYS = {"name", "data", "format", "train", "metric", "prompt", "answer_regex", "max_tokens", "tolerance", "limit", "few_shot", "multiple_choice", "system"}
_MC_KEYS = {"method", "circular", "length_normalisation", "score_end_of_turn"}


@dataclass(frozen=True)
class MultipleChoice:
    """How multiple-choice items are asked and scored."""

    method: str = "generate"
    circular: bool = False
    length_normalisation: str = "mean"
    score_end_of_turn: bool = True


@dataclass
class Task:
    """One evaluation task, as read from its YAML file."""

    name: str
    path: Path
    data: list[Path]
    metric: str
    format: str = "auto"
    train: list[Path] = field(default_factory=list)
    prompt: str = "{question}"
    answer_regex: str | None = None
    system: str | None = None
    max_tokens: int = 16
    tolerance: float = 0.05
    limit: int | None = None
    few_shot: list[dict[str, Any]] = field(default_factory=list)
    few_shot_file: Path | None = None
    few_shot_n: int = 0
    multiple_choice: MultipleChoice = field(default_factory=MultipleChoice)


@dataclass
class Item:
    """One question of a task: the conversation to ask, its references, its options."""

    id: str
    source: str
    base_dir: Path
    messages: list[dict[str, Any]]  # up to and including the last user turn (media parts kept)
    question: str  # the last user turn's text, before templating
    references: list[str]
    options: list[str] | None = None
    gold: int | None = None  # index of the right option
    kind: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    rotation: int = 0

    @property
    def has_media(self) -> bool:
        """Whether the prompt carries any media part."""
        return any(p["type"] != "text" for m in self.messages for p in m["content"])


def load_task(path: str | Path, overrides: dict[str, Any] | None = None) -> Task:
    """Read and check a task YAML; errors name the file and the key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"task file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a task file is a mapping of keys (data, metric, prompt, ...)")
    raw = {**raw, **(overrides or {})}
    unknown = set(raw) - _TASK_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; valid: {', '.join(sorted(_TASK_KEYS))}")
    for key in ("data", "metric"):
        if key not in raw:
            raise ConfigError(f"{path}: missing {key!r}")
    if raw["metric"] not in METRICS:
        raise ConfigError(f"{path}: metric {raw['metric']!r} is unknown; valid: {', '.join(METRICS)}")
    fmt = str(raw.get("format", "auto"))
    valid_formats = ("auto", "jsonl", "omnimodal", "llava", "messages", "hf", "parquet")
    if fmt not in valid_formats:
        raise ConfigError(f"{path}: format {fmt!r} is unknown (valid: {', '.join(valid_formats)})")

    def files(value: Any, key: str) -> list[Path]:
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{path}: {key!r} takes a file name or a list of them")
        return [(path.parent / v) for v in values]

    mc_raw = raw.get("multiple_choice") or {}
    if not isinstance(mc_raw, dict) or set(mc_raw) - _MC_KEYS:
        raise ConfigError(f"{path}: multiple_choice takes {', '.join(sorted(_MC_KEYS))}")
    mc = MultipleChoice(**mc_raw)
    if mc.method not in MC_METHODS:
        raise ConfigError(f"{path}: multiple_choice.method {mc.method!r} is unknown; valid: {', '.join(MC_METHODS)}")
    if mc.length_normalisation not in NORMALISATIONS:
        raise ConfigError(f"{path}: multiple_choice.length_normalisation must be one of {', '.join(NORMALISATIONS)}")
    task = Task(
        name=str(raw.get("name") or path.stem), path=path, data=files(raw["data"], "data"), metric=raw["metric"], format=fmt,
        train=files(raw["train"], "train") if raw.get("train") else [], prompt=str(raw.get("prompt", "{question}")),
        answer_regex=raw.get("answer_regex"),
        system=raw.get("system"), max_tokens=int(raw.get("max_tokens", 16)), tolerance=float(raw.get("tolerance", 0.05)),
        limit=raw.get("limit"), multiple_choice=mc,
    )
    shots = raw.get("few_shot") or []
    if isinstance(shots, dict):
        if "file" not in shots:
            raise ConfigError(f"{path}: few_shot as a mapping needs 'file' (and 'n')")
        task.few_shot_file, task.few_shot_n = path.parent / shots["file"], int(shots.get("n", 1))
    elif isinstance(shots, list):
        for i, shot in enumerate(shots):
            if not isinstance(shot, dict) or "question" not in shot or "answer" not in shot:
                raise ConfigError(f"{path}: few_shot[{i}] needs 'question' and 'answer'")
        task.few_shot = shots
    else:
        raise ConfigError(f"{path}: few_shot is a list of {{question, answer}} or {{file, n}}")
    if task.answer_regex is not None:
        import re

        try:
            re.compile(task.answer_regex)
        except (re.error, TypeError) as exc:
            raise ConfigError(f"{path}: answer_regex {task.answer_regex!r} is not a valid regular expression ({exc})") from None
    if task.max_tokens < 1:
        raise ConfigError(f"{path}: max_tokens must be at least 1")
    return task


def _gold_index(obj: dict[str, Any], options: list[str], references: list[str], where: str) -> int:
    answer = obj.get("answer", references[0] if references else None)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        return answer
    if isinstance(answer, str):
        a = answer.strip()
        if len(a) == 1 and a.upper() in LETTERS[: len(options)]:
            return LETTERS.index(a.upper())
        if a in options:
            return options.index(a)
    raise DataError(f"{where}: 'answer' {answer!r} is neither a letter, an index nor the text of one of the {len(options)} options")


def _rows(path: Path, fmt: str, ctx, validate, open_file):
    """``(raw row, file:line, media folder, validated messages)`` of each record, in any format
    training reads (``auto`` detects it); the row keeps the task's extra fields."""
    for source in open_file(path, fmt, ctx):
        for i in range(len(source)):
            where = source.where(i)
            obj = source.rows.row(i)
            raw, _kind = source.layout(obj, where, ctx)
            yield (obj if isinstance(obj, dict) else {}), where, source.base_dir, validate(raw, where, ctx.part_types, require_answer=False)


def read_items(path: Path, part_types: dict[str, str], metric: str, limit: int | None = None, options_required: bool = True, fmt: str = "auto") -> list[Item]:
    """Read a task's JSONL data file into items (errors name ``file:line``).

    ``options_required=False`` (training files for blind_frequent) lets a multiple-choice
    task's lines without ``options`` through, with their reference answer text.

    This is where a format reader plugs in: today the JSONL reader of ``omnimodal.data.records``
    (the same validation as training); a ``data/formats`` reader yielding records with their
    extra fields would replace the ``json_lines`` loop.
    """
    from omnimodal.data.formats import open_file
    from omnimodal.data.formats.source import ReadContext
    from omnimodal.data.records import validate_messages

    if not Path(path).exists():
        raise DataError(f"task data file not found: {path}")
    ctx = ReadContext.for_part_types(part_types)
    items: list[Item] = []
    for obj, where, base_dir, messages in _rows(Path(path), "omnimodal" if fmt == "jsonl" else fmt, ctx, validate_messages, open_file):
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is None:
            raise DataError(f"{where}: no user turn to ask")
        prompt = messages[: last_user + 1]
        after = [m for m in messages[last_user + 1 :] if m["role"] == "assistant"]
        answer_text = "\n".join(p["text"] for p in after[0]["content"] if p["type"] == "text") if after else None
        refs = obj.get("answers")
        if refs is None:
            refs = [answer_text] if answer_text is not None else []
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise DataError(f"{where}: 'answers' must be a list of strings")
        options, gold = obj.get("options"), None
        if metric == "multiple_choice" and (options_required or options is not None):
            if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
                raise DataError(f"{where}: a multiple-choice item needs 'options', a list of at least 2 strings")
            if len(options) > len(LETTERS):
                raise DataError(f"{where}: {len(options)} options; at most {len(LETTERS)}")
            gold = _gold_index(obj, options, refs, where)
            refs = [options[gold]]
        elif not refs:
            raise DataError(f"{where}: no reference answer (an assistant turn after the question, or 'answers')")
        question = "\n".join(p["text"] for p in prompt[-1]["content"] if p["type"] == "text")
        extra = {k: v for k, v in obj.items() if k not in ("messages", "conversations")}
        items.append(Item(str(obj.get("id", where)), where, base_dir, prompt, question, refs, options, gold, obj.get("kind"), extra))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise DataError(f"{path}: no items")
    return items


def rotate(item: Item, r: int) -> Item:
    """The item with its options rotated by ``r`` (option ``(i + r) % N`` shown at position i)."""
    n = len(item.options or [])
    options = [item.options[(i + r) % n] for i in range(n)]
    return replace(item, options=options, gold=(item.gold - r) % n, rotation=r)


def expand(items: list[Item], task: Task) -> list[Item]:
    """Every rotation of every item under CircularEval; the items themselves otherwise."""
    if task.metric != "multiple_choice" or not task.multiple_choice.circular:
        return items
    return [rotate(it, r) for it in items for r in range(len(it.options))]


def format_options(options: list[str]) -> str:
    """``A. first`` lines, one per option."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def render_text(task: Task, item: Item) -> str:
    """The last user turn's text after the prompt template."""
    values = {k: v for k, v in item.fields.items() if isinstance(v, (str, int, float))}
    values.update(question=item.question, options=format_options(item.options) if item.options else "")
    try:
        return task.prompt.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"{task.path}: prompt template {task.prompt!r} cannot be filled for {item.source} ({type(exc).__name__}: {exc})") from None


def _user_turn(task: Task, item: Item) -> dict[str, Any]:
    media = [p for p in item.messages[-1]["content"] if p["type"] != "text"]
    return {"role": "user", "content": [*media, {"type": "text", "text": render_text(task, item)}]}


def _answer_text(task: Task, item: Item) -> str:
    if item.options is not None and item.gold is not None:
        return LETTERS[item.gold] if task.multiple_choice.method != "loglikelihood" else item.options[item.gold]
    return item.references[0]


def shot_items(task: Task, part_types: dict[str, str]) -> list[Item]:
    """The few-shot examples as items (from the task's list or the first n of its file)."""
    if task.few_shot_file is not None:
        return read_items(task.few_shot_file, part_types, task.metric, task.few_shot_n, fmt=task.format)
    shots = []
    for i, s in enumerate(task.few_shot):
        options = s.get("options")
        gold = _gold_index(s, options, [str(s["answer"])], f"{task.path}: few_shot[{i}]") if options else None
        msgs = [{"role": "user", "content": [{"type": "text", "text": str(s["question"])}]}]
        shots.append(Item(f"shot{i}", f"{task.path}: few_shot[{i}]", task.path.parent, msgs, str(s["question"]), [str(s["answer"])], options, gold))
    return shots


def conversation(task: Task, item: Item, shots: list[Item], blind: bool = False) -> list[dict[str, Any]]:
    """The messages asked for ``item``: system, few-shot turns, earlier turns, the templated question.

    ``blind=True`` removes every media part (the blind_model baseline).
    """
    messages: list[dict[str, Any]] = []
    if task.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": task.system}]})
    for shot in shots:
        turns = [*shot.messages[:-1], _user_turn(task, shot), {"role": "assistant", "content": [{"type": "text", "text": _answer_text(task, shot)}]}]
        messages += [_absolute(m, shot.base_dir) for m in turns]
    messages += item.messages[:-1]
    messages.append(_user_turn(task, item))
    messages = [_absolute(m, item.base_dir) for m in messages]
    if blind:
        messages = [{"role": m["role"], "content": [p for p in m["content"] if p["type"] == "text"] or [{"type": "text", "text": ""}]} for m in messages]
    return messages


def _absolute(message: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A message whose media ``path`` keys are absolute (items and shots come from different files)."""
    parts = []
    for p in message["content"]:
        if p["type"] != "text" and isinstance(p.get("path"), str) and not Path(p["path"]).is_absolute():
            p = {**p, "path": str((base_dir / p["path"]).resolve())}
        parts.append(p)
    return {"role": message["role"], "content": parts}


def dumps_item(item: Item) -> str:
    """A short JSON id of an item and its rotation (for per-item comparisons)."""
    return json.dumps([item.id, item.rotation])
