"""The ``omnimodal`` command. Heavy libraries load only inside the subcommand that needs them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omnimodal.errors import ConfigError, OmnimodalError, did_you_mean

USAGE = """omnimodal <command> [...]

commands:
  train [overrides]   train with Hydra overrides (no overrides: the offline demo)
  eval RUN|MODEL      evaluate a saved run or model dir on a test file
  plugins             list installed plugins, their modalities and projectors
  export              write a saved model as a Hugging Face Llava dir (or re-save it)
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
                    print(f"    modality {name}: part type {spec.part_type!r}, placeholder {spec.placeholder}, API parts {list(spec.api_part_types)}")
                else:
                    print(f"    modality {name}: UNAVAILABLE - {registry.unavailable.get(name, '')}")
        if p.projectors:
            print(f"    projectors: {', '.join(p.projectors)}")
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
                raise ConfigError(f"unknown modality {name!r} in {item!r}.{did_you_mean(name, configs)}")


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


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a saved model (or a run dir holding ``model/``) on a JSONL test file."""
    import json

    from omnimodal.data.records import read_jsonl
    from omnimodal.evaluate import blind_baseline, evaluate, format_table
    from omnimodal.model import OmniModel

    path = Path(args.model)
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
    table = evaluate(model, records, baseline, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, out_path=args.output)
    print(format_table(table))
    if args.output:
        print(f"wrote {args.output}")
    elif args.json:
        print(json.dumps(table, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a saved model (or a run dir holding ``model/``) as ``--format`` to ``--output``."""
    from omnimodal.export import export

    out = export(args.model, args.format, args.output)
    print(f"wrote {args.format} model to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnimodal", usage=USAGE, description="Any-modality LLMs in the LLaVA family.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.add_parser("train", help="train with Hydra overrides (no overrides: the offline demo)", add_help=False)
    p = sub.add_parser("plugins", help="list installed plugins")
    p.add_argument("-v", "--verbose", action="store_true", help="show hooks and full failure tracebacks")
    p = sub.add_parser("eval", help="evaluate a saved run or model dir")
    p.add_argument("model", help="a run dir (with model/) or a model dir")
    p.add_argument("--data", nargs="+", help="test JSONL file(s); default: the run's test files")
    p.add_argument("--train", nargs="+", help="training JSONL file(s) for the blind baseline (default: stored with the model)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--output", help="write the table as JSON here")
    p.add_argument("--json", action="store_true", help="also print the table as JSON")
    p = sub.add_parser("export", help="export a saved run or model dir (llava: a transformers LlavaForConditionalGeneration dir)")
    p.add_argument("--model", required=True, help="a run dir (with model/) or a model dir")
    p.add_argument("--format", choices=["llava", "omnimodal"], default="llava")
    p.add_argument("--output", required=True, help="directory to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``omnimodal`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "train":
            return cmd_train(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return {"plugins": cmd_plugins, "eval": cmd_eval, "export": cmd_export}[args.command](args)
    except OmnimodalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
