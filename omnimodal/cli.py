"""The ``omnimodal`` command. Heavy libraries load only inside the subcommand that needs them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omnimodal import startup
from omnimodal.errors import ConfigError, OmnimodalError, did_you_mean

USAGE = """omnimodal <command> [...]

commands:
  train [overrides]   train with Hydra overrides (no overrides: the offline demo)
  cache build [overrides]
                      fill data.feature_cache for every split (same overrides as train)
  eval RUN|MODEL      evaluate a saved run or model dir on its test file
  eval [RUN [RUN_B]] --task TASK.yaml [--endpoint URL --model NAME]
                      benchmark-style tasks (several --task), two runs compared, or a server
  plugins             list installed plugins, their modalities and projectors
  export              write a saved model in another format (formats come from plugins)
  chat --model DIR [--<media flag> VALUE | --part TYPE=VALUE ...] [question]
                      answer one question (or chat on stdin without a question);
                      media flags come from the installed modalities (chat --help)
  generate --model DIR --input q.jsonl --output a.jsonl
                      answer a JSONL file of conversations
  serve --model DIR [--host H] [--port P]
                      OpenAI-compatible HTTP server (/v1/chat/completions)
  new-plugin NAME [--dir DIR]
                      write a ready modality plugin package (docs/writing-a-plugin.md)
"""


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every plugin: name, distribution, version, what it provides, or why it failed."""
    from omnimodal.plugins import get_registry

    try:
        registry = get_registry()
    except OmnimodalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bad = 0
    for p in sorted(registry.plugins, key=lambda p: p.name):
        print(f"{p.name}  ({p.distribution} {p.version})  [{p.status}]  entry point: {p.value}")
        if p.modalities:
            for name in p.modalities:
                spec = registry.modalities.get(name)
                if spec is not None:
                    flags = f", chat flags {' '.join('--' + f for f in spec.cli_flags)}" if spec.cli_flags else ""
                    print(f"    modality {name}: part type {spec.part_type!r}, placeholder {spec.placeholder}, API parts {list(spec.api_part_types)}{flags}")
                else:
                    print(f"    modality {name}: UNAVAILABLE - {registry.unavailable.get(name, '')}")
        if p.projectors:
            print(f"    projectors: {', '.join(p.projectors)}")
        if p.exports:
            print(f"    export formats: {', '.join(p.exports)}")
        if args.verbose and p.hooks:
            print(f"    hooks: {', '.join(p.hooks)}")
        if p.status in ("failed", "incompatible"):
            bad += 1
            reason = p.reason if args.verbose else p.reason.splitlines()[0]
            print(f"    {p.status.upper()}: {reason}")
        elif p.status == "disabled":
            print(f"    {p.reason}")
    if bad:
        print(f"\n{bad} plugin(s) could not be loaded; the others work. Use -v for tracebacks.", file=sys.stderr)
    return 0


def available_modality_configs() -> set[str]:
    """Modality names that have a ``modalities/<name>.yaml`` on the config search path."""
    from omnimodal.builtin import core_config_dir
    from omnimodal.plugins import get_registry

    names = set()
    for d in [str(core_config_dir()), *get_registry().config_dirs]:
        names.update(p.stem for p in (Path(d) / "modalities").glob("*.yaml"))
    return names


def check_overrides(overrides: list[str]) -> None:
    """Catch an unknown modality before Hydra does, with the list of valid ones."""
    from omnimodal.plugins import get_registry

    for item in overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+~") != "modalities" or not value:
            continue
        names = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        configs = available_modality_configs()
        registry = get_registry()
        for name in names:
            if name in registry.unavailable:
                raise ConfigError(f"modality {name!r} is unavailable: {registry.unavailable[name]}")
            if name not in configs:
                raise ConfigError(f"unknown modality {name!r} in {item!r}.{did_you_mean(name, configs)}{registry.failed_hint(name)}")


def cmd_train(overrides: list[str]) -> int:
    """Hand the overrides to Hydra; Lightning's DDP re-launches ``python -m omnimodal.train``."""
    import importlib.util

    if not any(o.startswith(("-h", "--help", "--cfg", "--info", "-c", "--hydra-help")) for o in overrides):
        check_overrides(overrides)
    # Make Lightning's sub-process launcher re-run `python -m omnimodal.train <overrides>`.
    sys.modules["__main__"].__spec__ = importlib.util.find_spec("omnimodal.train")
    sys.argv = ["omnimodal train", *overrides]
    from omnimodal.train import main

    main()
    return 0


def cmd_cache(argv: list[str]) -> int:
    """``omnimodal cache build [overrides]``: fill the feature cache with the run's frozen encoders."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] != "build":
        print("usage: omnimodal cache build [overrides]   (the overrides `omnimodal train` takes, with "
              "data.feature_cache=<dir>; see README, 'Feature cache')", file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from omegaconf import OmegaConf

    from omnimodal.api import compose
    from omnimodal.data.feature_cache import build_cache

    check_overrides(argv[1:])
    plain = OmegaConf.to_container(compose(argv[1:]), resolve=True)
    plain.pop("hydra", None)
    build_cache(plain, progress=bool(plain["trainer"].get("enable_progress_bar", True)))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a saved run on task files (``--task``), on its own test file, or compare two runs."""
    if args.task:
        return _eval_tasks(args)
    if args.endpoint or len(args.runs) != 1:
        raise ConfigError("without --task, eval takes exactly one run or model dir (its own test file); give --task TASK.yaml for endpoints and comparisons")
    return _eval_heldout(args)


def _eval_heldout(args: argparse.Namespace) -> int:
    """The end-of-training evaluation again: exact match on the run's test file vs the blind baseline."""
    import json

    from omnimodal.data.records import read_jsonl
    from omnimodal.eval.heldout import blind_baseline, evaluate, format_table
    from omnimodal.model import OmniModel

    path = Path(args.runs[0])
    model_dir = path / "model" if (path / "model" / "omnimodal.json").is_file() else path
    model = OmniModel.from_pretrained(model_dir)
    test_files = args.data or model.extra.get("data", {}).get("test", [])
    if not test_files:
        raise ConfigError("no test file: give --data test.jsonl")
    part_types = {m.part_type: n for n, m in model.modalities.items()}
    records = [r for f in test_files for r in read_jsonl(f, part_types)]
    if args.train:
        train_records = [r for f in args.train for r in read_jsonl(f, part_types)]
        baseline = blind_baseline(train_records)
    else:
        baseline = model.extra.get("blind_baseline")
        if baseline is None:
            raise ConfigError(f"{model_dir}: no stored blind baseline; give --train train.jsonl")
    table = evaluate(model, records, baseline, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, out_path=args.output,
                     blind_model=not args.no_blind_model)
    print(format_table(table))
    if args.output:
        print(f"wrote {args.output}")
    elif args.json:
        print(json.dumps(table, indent=2))
    return 0


def _eval_tasks(args: argparse.Namespace) -> int:
    """``--task`` files against one run, two runs (compared), or an endpoint."""
    import json

    from omnimodal.eval import report
    from omnimodal.eval.runner import Endpoint, InProcess, RunOptions, run_task
    from omnimodal.eval.tasks import load_task

    overrides = {"limit": args.limit} if args.limit is not None else {}
    tasks = [load_task(t, overrides) for t in args.task]
    if args.endpoint and args.runs:
        raise ConfigError("give either run dirs or --endpoint, not both")
    if args.endpoint and not args.model:
        raise ConfigError("--endpoint needs --model NAME (the id the server serves; see its /v1/models)")
    if not args.endpoint and not args.runs:
        raise ConfigError("give a run or model dir, two of them to compare, or --endpoint URL --model NAME")
    if len(args.runs) > 2:
        raise ConfigError(f"eval compares at most two runs, got {len(args.runs)}")
    runs: dict[str, list[dict]] = {}
    for target in args.runs or [args.endpoint]:
        stored = None
        if args.endpoint:
            backend = Endpoint(args.endpoint, args.model, concurrency=args.concurrency)
        else:
            from omnimodal.inference import load

            pipe = load(target, device=args.device)
            backend = InProcess(pipe, batch_size=args.batch_size, name=str(target))
            stored = pipe.model.extra.get("blind_baseline")
        options = RunOptions(blind_model=not args.no_blind_model, stored_baseline=stored, progress=not args.quiet)
        runs[backend.name] = [run_task(task, backend, options) for task in tasks]
    names = list(runs)
    if args.output:
        out = Path(args.output)
    elif len(args.runs) == 1 and (Path(args.runs[0]) / "model").is_dir():
        out = Path(args.runs[0]) / "eval"  # a run dir; a bare model dir is left as saved
    else:
        out = Path("eval-results")
    for k, name in enumerate(names):
        if len(names) > 1:
            print(f"{'AB'[k]}: {name}")
        print(report.format_table(runs[name]))
        report.write_results(runs[name], out / ("AB"[k] if len(names) > 1 else ""))
    if len(names) == 2:
        comparisons = {}
        for ra, rb in zip(runs[names[0]], runs[names[1]]):
            text, diff = report.compare(ra, rb, limit=args.show_diff)
            print(text)
            comparisons[ra["task"]] = {"a": names[0], "b": names[1], "a_score": ra["scores"]["score"], "b_score": rb["scores"]["score"], "disagreements": diff}
        (out / "comparison.json").write_text(json.dumps(comparisons, indent=2, ensure_ascii=False))
    chart = report.plot_results(runs, out / "results.png")
    print(f"wrote {out}" + ("" if chart else " (no chart: matplotlib, from the 'plot' extra, is not installed)"))
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    """Write a modality plugin package (``omnimodal.scaffold``) and say what to run next."""
    from omnimodal.scaffold import NEXT_STEPS, new_plugin, plugin_names

    target = new_plugin(args.name, args.dir, force=args.force)
    print(NEXT_STEPS.format(target=target, **plugin_names(args.name)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a saved model (or a run dir holding ``model/``) as ``--format`` to ``--output``."""
    from omnimodal.export import export

    out = export(args.model, args.format, args.output)
    print(f"wrote {args.format} model to {out}")
    return 0


class _MediaAction(argparse.Action):
    """A modality's flag (``--image a.png``) or ``--part TYPE=VALUE``: one list, in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, "media", None) or [])
        if self.dest == "part":
            kind, sep, value = str(values).partition("=")
            if not sep or not kind or not value:
                parser.error(f"--part takes TYPE=VALUE (a part type or modality name, e.g. --part points=cloud.npy), got {values!r}")
        else:
            kind, value = str(option_string), values  # "--image": named so in errors
        items.append((kind, value))
        namespace.media = items


def _generation_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")


def _options(args: argparse.Namespace):
    from omnimodal.inference import GenerationOptions

    return GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, stop=tuple(args.stop), seed=args.seed)


def _media_part(kind: str, value: str, modalities: dict) -> dict:
    """A command-line media value -> a data-file content part of the model's modality ``kind``.

    ``kind`` is one of a modality's ``cli_flags``, its part type or its name (from its spec);
    the part then goes through the modality's ``item_from_part`` like a data-file part.
    """
    name = kind.removeprefix("--")
    for modality in modalities.values():
        if name in modality.spec.cli_names():
            return modality.cli_part(value)
    valid = sorted({n for m in modalities.values() for n in m.spec.cli_names()})
    shown = kind if kind.startswith("--") else f"--part {kind}="
    raise ConfigError(f"this model has no modality for {shown} (it takes: --part {'|'.join(valid) or '(no media)'}=VALUE)")


def cmd_chat(args: argparse.Namespace) -> int:
    """One answer to a question with media, or an interactive chat reading stdin lines."""
    from omnimodal.inference import load

    pipe = load(args.model, device=args.device)
    options = _options(args)
    media = [_media_part(k, v, pipe.modalities) for k, v in (args.media or [])]
    history: list[dict] = []
    if args.system:
        history.append({"role": "system", "content": args.system})

    def answer(text: str, parts: list[dict]) -> str:
        content = [*parts, {"type": "text", "text": text}]
        messages = [*history, {"role": "user", "content": content}]
        pieces = []
        for piece in pipe.stream(messages, options):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print()
        history.extend([{"role": "user", "content": content}, {"role": "assistant", "content": "".join(pieces)}])
        return "".join(pieces)

    if args.question:
        answer(" ".join(args.question), media)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("omnimodal chat: one message per line; /reset forgets the conversation, /exit or Ctrl-D ends.", file=sys.stderr)
    first = True
    while True:
        if interactive:
            print("> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        line = line.strip()
        if not line:
            continue
        if line == "/reset":
            del history[1 if args.system else 0 :]
            first = True
            continue
        try:
            answer(line, media if first else [])
        except OmnimodalError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if not interactive:
                return 2
            continue
        first = False


def cmd_generate(args: argparse.Namespace) -> int:
    """Answer each conversation of a JSONL file; write the input line plus ``answer`` per line."""
    import json

    from tqdm.auto import tqdm

    from omnimodal.inference import load

    pipe = load(args.model, device=args.device)
    options = _options(args)
    src = Path(args.input)
    if not src.is_file():
        raise ConfigError(f"input file not found: {src}")
    from omnimodal.data.records import json_lines, parse_record_line

    rows = [(where, parse_record_line(line, where)) for where, line in json_lines(src)]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    with out.open("w", encoding="utf-8") as f, tqdm(total=len(rows), desc="generate", unit="conv", disable=args.quiet) as bar:
        for start in range(0, len(rows), args.batch_size):
            chunk = rows[start : start + args.batch_size]
            prompts, results = [], {}
            for k, (where, obj) in enumerate(chunk):
                try:
                    msgs = obj["messages"]
                    if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
                        msgs = msgs[:-1]  # a training record: ask its last question again
                    prompt = pipe.prepare(msgs, src.parent, where)
                    pipe.check_length(prompt, options.max_new_tokens)
                    prompts.append((k, prompt))
                except OmnimodalError as exc:
                    if not args.skip_errors:
                        raise
                    results[k] = {"error": str(exc)}
                    failed += 1
            if prompts:
                for (k, _), done in zip(prompts, pipe.generate_prompts([p for _, p in prompts], options)):
                    results[k] = {"answer": done.text, "finish_reason": done.finish_reason}
            for k, (_, obj) in enumerate(chunk):
                f.write(json.dumps({**obj, **results[k]}, ensure_ascii=False) + "\n")
            bar.update(len(chunk))
    print(f"wrote {len(rows)} answer(s) to {out}" + (f" ({failed} failed, see their 'error')" if failed else ""), file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the model over an OpenAI-compatible HTTP API (FastAPI + uvicorn)."""
    from omnimodal.compat import require_extra

    require_extra("serve", ("fastapi", "uvicorn", "pydantic"), "omnimodal serve")
    from omnimodal.inference import load, resolve_model_dir
    from omnimodal.serving.app import ServerSettings, serve

    model_dir = resolve_model_dir(args.model)
    pipe = load(model_dir, device=args.device)
    name = args.served_model_name or Path(args.model).resolve().name
    settings = ServerSettings(
        model_name=name, max_request_bytes=args.max_request_bytes, max_media_items=args.max_media_items,
        max_tokens=args.max_tokens, default_max_tokens=min(args.default_max_tokens, args.max_tokens),
        allow_remote_media=args.allow_remote_media, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: reachable from other machines, with no authentication", file=sys.stderr)
    print(f"serving {model_dir} as {name!r} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    serve(pipe, settings, args.host, args.port, args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnimodal", usage=USAGE, description="Any-modality LLMs in the LLaVA family.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.add_parser("train", help="train with Hydra overrides (no overrides: the offline demo)", add_help=False)
    p = sub.add_parser("plugins", help="list installed plugins")
    p.add_argument("-v", "--verbose", action="store_true", help="show hooks and full failure tracebacks")
    p = sub.add_parser("eval", help="evaluate a saved run (its test file, or --task files), compare two, or an endpoint")
    p.add_argument("runs", nargs="*", help="a run dir (with model/) or a model dir; two to compare them (with --task)")
    p.add_argument("--task", action="append", default=[], help="task YAML file (repeatable)")
    p.add_argument("--endpoint", help="an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (with --task)")
    p.add_argument("--model", help="the model name to ask the endpoint for")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight to an endpoint")
    p.add_argument("--limit", type=int, help="the first N items of each task only")
    p.add_argument("--no-blind-model", action="store_true", help="skip the blind_model baseline (a second pass without media)")
    p.add_argument("--show-diff", type=int, default=20, help="disagreements printed per task when comparing")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--data", nargs="+", help="without --task: test JSONL file(s); default: the run's test files")
    p.add_argument("--train", nargs="+", help="without --task: training JSONL file(s) for the blind baseline (default: stored with the model)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=8, help="without --task (a task sets its own max_tokens)")
    p.add_argument("--output", help="without --task: write the table as JSON here; with --task: the results directory "
                   "(default: RUN/eval, or ./eval-results for endpoints and comparisons)")
    p.add_argument("--json", action="store_true", help="also print the table as JSON")
    p = sub.add_parser("export", help="export a saved run or model dir in a format a plugin provides")
    p.add_argument("--model", required=True, help="a run dir (with model/) or a model dir")
    formats = _registered(lambda r: {n: s.description for n, s in sorted(r.exports.items())}, {})
    listed = "; ".join(f"{n}: {d}" for n, d in formats.items())
    p.add_argument("--format", required=True, metavar="NAME", help=f"one of the registered formats ({listed or 'none loaded'})")
    p.add_argument("--output", required=True, help="directory to write")
    _add_inference_parsers(sub)
    p = sub.add_parser("new-plugin", help="write a ready modality plugin package")
    p.add_argument("name", help="the modality name (a lower-case identifier, e.g. ecg)")
    p.add_argument("--dir", help="where to write it (default: ./omnimodal-NAME)")
    p.add_argument("--force", action="store_true", help="write into a non-empty directory")
    return parser


def _registered(read, default):
    """``read(registry)``, or ``default`` when the plugins cannot be loaded (the command reports it)."""
    from omnimodal.plugins import get_registry

    try:
        return read(get_registry())
    except OmnimodalError:
        return default


def _media_flags(p: argparse.ArgumentParser) -> None:
    """One ``--FLAG VALUE`` per ``cli_flags`` entry of each registered modality's spec."""
    taken = {opt for action in p._actions for opt in action.option_strings} | {"--part"}
    specs = _registered(lambda r: sorted(r.modalities.values(), key=lambda s: s.name), [])
    group = p.add_argument_group("media flags (from the installed modality plugins)")
    for spec in specs:
        for flag in spec.cli_flags:
            option = f"--{flag}"
            if option in taken:
                print(f"warning: modality {spec.name!r} asks for {option}, which is already taken; use --part {spec.part_type}=VALUE", file=sys.stderr)
                continue
            taken.add(option)
            what = spec.cli_help or f"a {spec.part_type} item"
            group.add_argument(option, dest=f"media_{spec.name}", action=_MediaAction, metavar="VALUE", help=f"{what} ({spec.name}; repeatable, order kept)")


def _add_inference_parsers(sub) -> None:
    """The ``chat``, ``generate`` and ``serve`` subcommands."""
    p = sub.add_parser("chat", help="ask a saved model about media (one question, or interactive)")
    p.add_argument("--model", required=True, help="a model dir or a run dir holding model/")
    p.add_argument("--part", action=_MediaAction, metavar="TYPE=VALUE", help="any modality's part: TYPE is its part type, name or flag (e.g. --part molecule=CCO); repeatable, order kept")
    p.add_argument("--system", help="a system message")
    _generation_args(p, 128)
    p.add_argument("question", nargs="*", help="the question; without it, read one message per stdin line")
    _media_flags(p)  # last, so a plugin's flag can never shadow a chat option
    p.set_defaults(media=[])

    p = sub.add_parser("generate", help="answer a JSONL file of conversations")
    p.add_argument("--model", required=True, help="a model dir or a run dir holding model/")
    p.add_argument("--input", required=True, help="JSONL conversations (training format; a final assistant turn is ignored)")
    p.add_argument("--output", required=True, help="JSONL: each input line plus 'answer' and 'finish_reason'")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--skip-errors", action="store_true", help="write {'error': ...} for a bad line instead of stopping")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _generation_args(p, 64)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    p.add_argument("--model", required=True, help="a model dir or a run dir holding model/")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", help="the model id clients send (default: the directory's name)")
    p.add_argument("--max-request-bytes", type=int, default=20 * 2**20, help="larger bodies get 413")
    p.add_argument("--max-media-items", type=int, default=8, help="media parts per request")
    p.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask for")
    p.add_argument("--default-max-tokens", type=int, default=128, help="max_tokens when a request gives none")
    p.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) image URLs (refused by default)")
    p.add_argument("--max-batch-size", type=int, default=8, help="queued requests generated together")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting beyond this get 503")
    p.add_argument("--device", default=None)
    p.add_argument("--log-level", default="info")


MODEL_COMMANDS = {"eval", "export", "chat", "generate", "serve"}


def _check_install() -> None:
    """Before any command that builds a model: torch and torchaudio must import together."""
    from omnimodal.compat import check_torch_stack

    check_torch_stack()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``omnimodal`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # train: no cyclic GC while start-up loads, back on before training (omnimodal/startup.py)
    with startup.command(pause_gc=argv[:1] == ["train"]):
        try:
            if argv and argv[0] == "train":
                if not any(o.startswith(("-h", "--help", "--cfg", "--info", "-c", "--hydra-help")) for o in argv[1:]):
                    _check_install()
                return cmd_train(argv[1:])
            if argv and argv[0] == "cache":
                _check_install()
                return cmd_cache(argv[1:])
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help()
                return 0
            if args.command in MODEL_COMMANDS:
                _check_install()
            commands = {"plugins": cmd_plugins, "eval": cmd_eval, "export": cmd_export}
            commands.update(chat=cmd_chat, generate=cmd_generate, serve=cmd_serve)
            commands["new-plugin"] = cmd_new_plugin
            return commands[args.command](args)
        except OmnimodalError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
