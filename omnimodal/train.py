"""`omnimodal train`: compose the config with Hydra, train with Lightning, evaluate, save.

Run as ``omnimodal train [overrides]`` or ``python -m omnimodal.train [overrides]``. Lightning's
DDP re-launches this very file for ranks above 0, with Hydra's run dir passed along.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from omnimodal import startup
from omnimodal.builtin import core_config_dir

log = logging.getLogger("omnimodal.train")

EXIT_EVAL_FAILED = 3  # the run trained and saved its model, but evaluation failed


def register_search_path_plugin() -> None:
    """Make sure Hydra knows omnimodal's SearchPathPlugin.

    Hydra discovers plugins by scanning the ``hydra_plugins`` namespace package, which an
    editable install may hide; registering the class explicitly is idempotent.
    """
    from hydra.core.plugins import Plugins

    from hydra_plugins.omnimodal_searchpath import OmnimodalSearchPathPlugin

    Plugins.instance().register(OmnimodalSearchPathPlugin)


register_search_path_plugin()


def run_dir() -> Path:
    """The Hydra run directory (or the cwd when Hydra is not running)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def resolve_files(cfg: dict[str, Any]) -> dict[str, list[Path]]:
    """User files from data.train/val/test, or the demo data of every active modality."""
    from omnimodal.demo import prepare_demo
    from omnimodal.training.datamodule import as_paths

    data = cfg["data"]
    user = {split: as_paths(data.get(split)) for split in ("train", "val", "test")}
    if user["train"]:
        return user
    return prepare_demo(list(cfg["modalities"]), data["demo_root"], int(cfg.get("seed", 0)))


def check_available(names: list[str]) -> None:
    """Every selected modality's plugin can run here (its extra is installed), checked before
    any data is built; the error names each missing extra and the run that works without it."""
    from omnimodal.errors import ConfigError
    from omnimodal.plugins import get_registry

    registry = get_registry()
    missing = [name for name in names if name in registry.unavailable]
    if missing:
        usable = [name for name in names if name not in registry.unavailable]
        rest = f"; or train without {'it' if len(missing) == 1 else 'them'}: modalities=[{','.join(usable)}]" if usable else ""
        raise ConfigError("; ".join(f"modality {name!r} is unavailable: {registry.unavailable[name]}" for name in missing) + rest)


def _quiet_logs() -> None:
    """One copy of each log line (through Hydra's handlers), without known third-party noise."""
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    warnings.filterwarnings("ignore", message=".*set_vital.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    # Frozen parts are put in eval mode on purpose (the parameter table's "mode" column says so).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def model_signature(cfg: dict[str, Any]) -> dict[str, str]:
    """What must not change between a checkpoint and its resumption (as comparable strings)."""
    sig = {"decoder": json.dumps(cfg["decoder"], sort_keys=True), "lora": json.dumps(cfg["stage"].get("lora"), sort_keys=True)}
    for name, mcfg in sorted(cfg["modalities"].items()):
        sig[f"modalities.{name}"] = json.dumps({k: mcfg.get(k) for k in ("encoder", "projector")}, sort_keys=True)
    return sig


def pretrain_config(cfg: dict[str, Any], fresh: bool) -> dict[str, Any]:
    """``pretrain_encoders`` with ``epochs`` resolved: ``auto`` is 4 for a model built by this run
    (``fresh``) on the built-in demo data (``data.train`` unset), else 0; a resumed run
    (``ckpt_path``) never pre-trains (its checkpoint holds the weights)."""
    from omnimodal.errors import ConfigError

    pre = dict(cfg.get("pretrain_encoders") or {})
    epochs = pre.get("epochs", 0)
    if epochs == "auto":
        epochs = 4 if fresh and not cfg["data"].get("train") else 0
    elif not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ConfigError(f"pretrain_encoders.epochs must be auto or a whole number >= 0, got {epochs!r}")
    if cfg.get("ckpt_path"):
        epochs = 0
    return {**pre, "epochs": epochs}


def load_init(cfg: dict[str, Any]):
    """Load ``init_from`` (a model dir or a run dir holding ``model/``) and check it fits the run."""
    from omnimodal.errors import ConfigError
    from omnimodal.model import CONFIG_NAME, OmniModel

    path = Path(cfg["init_from"]).expanduser()
    if (path / "model" / CONFIG_NAME).is_file():
        path = path / "model"
    if not (path / CONFIG_NAME).is_file():
        raise ConfigError(f"init_from={cfg['init_from']!r}: no saved model there (expected {CONFIG_NAME} in it or in its model/)")
    model = OmniModel.from_pretrained(path)
    want, have = set(cfg["modalities"]), set(model.modalities)
    if want != have:
        raise ConfigError(f"init_from={path}: the model has modalities {sorted(have)} but this run selects {sorted(want)}")
    for name, modality in model.modalities.items():
        for part in ("encoder", "projector"):
            saved = {k: v for k, v in (modality.cfg.get(part) or {}).items() if not k.startswith("_") and k != "hf_config"}
            current = {k: v for k, v in (cfg["modalities"][name].get(part) or {}).items() if not k.startswith("_")}
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            if diff:
                raise ConfigError(f"init_from={path}: modalities.{name}.{part} differs from the saved model in {diff} (saved {[saved.get(k) for k in diff]}, run {[current.get(k) for k in diff]})")
    saved_dec = model.decoder_cfg
    keys = [k for k in cfg["decoder"] if k not in ("tokenizer", "chat_template") and k in saved_dec]
    diff = [k for k in keys if saved_dec.get(k) != cfg["decoder"].get(k)]
    if diff:
        raise ConfigError(f"init_from={path}: decoder.{diff[0]} is {saved_dec.get(diff[0])!r} in the saved model but {cfg['decoder'].get(diff[0])!r} in this run")
    return model


TOKENIZER_DIR = "tokenizer"


def run_tokenizer(cfg: dict[str, Any], out_dir: Path, files: dict[str, list[Path]], modalities: dict[str, Any]):
    """The run's tokenizer, placeholders included: built when the run starts and saved in
    ``<run dir>/tokenizer``; a resumed run (``ckpt_path`` set) loads it from there instead of
    building it again from whatever the data or the hub holds now."""
    from transformers import AutoTokenizer

    from omnimodal.data.dataset import training_texts
    from omnimodal.data.records import SkipReport
    from omnimodal.decoder import add_placeholders
    from omnimodal.model import build_tokenizer
    from omnimodal.templates import ChatFormat, set_chat_format
    from omnimodal.training.datamodule import read_split

    placeholders = [m.placeholder for m in modalities.values()]
    target = out_dir / TOKENIZER_DIR
    ckpt = cfg.get("ckpt_path")
    source = None
    if ckpt:  # the tokenizer of the run that wrote the checkpoint (<run dir>/checkpoints/x.ckpt)
        ckpt_run = out_dir if ckpt == "last" else Path(ckpt).expanduser().resolve().parent.parent
        if (ckpt_run / TOKENIZER_DIR).is_dir():
            source = ckpt_run / TOKENIZER_DIR
        else:
            log.warning("%s: no saved tokenizer (a run from an older omnimodal): building it again; the resume "
                        "is refused if it differs from the checkpoint's", ckpt_run / TOKENIZER_DIR)
    if source is not None:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if (source / CHAT_FORMAT_FILE).is_file():
            set_chat_format(tokenizer, ChatFormat.from_dict(json.loads((source / CHAT_FORMAT_FILE).read_text())))
    else:
        texts = None
        if cfg["decoder"].get("kind") == "scratch":
            # The scratch tokenizer is trained on the training text (deterministic, so every rank agrees).
            # Streamed from the lazily read records (the data module reuses the index).
            part_types = {m.part_type: n for n, m in modalities.items()}
            records = read_split(files["train"], part_types, cfg["data"].get("on_error", "raise"), SkipReport(), cfg["data"])
            texts = training_texts(records)
        tokenizer = build_tokenizer(cfg["decoder"], texts)
    add_placeholders(tokenizer, placeholders)  # a no-op on a saved tokenizer of the same modalities
    if _is_rank_zero() and (source is None or source.resolve() != target.resolve()):
        _save_atomically(tokenizer, target)
    return tokenizer


def _is_rank_zero() -> bool:
    """Rank 0, or no distributed launch yet (Lightning sets the rank variables of the ranks it starts)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


CHAT_FORMAT_FILE = "omnimodal_chat_format.json"


def _save_atomically(tokenizer, directory: Path) -> None:
    """Write the tokenizer beside ``directory``, then swap it in (a kill never leaves half of one)."""
    import shutil

    from omnimodal.templates import chat_format

    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    # The chat format (EOS list, template kwargs, the vocabulary size before omnimodal's tokens)
    # travels on the tokenizer object, not in its files: without it a resumed run would see no
    # new tokens and build a model without their trainable rows.
    (tmp / CHAT_FORMAT_FILE).write_text(json.dumps(chat_format(tokenizer).to_dict()))
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def no_cudnn_attention():
    """Keep PyTorch's scaled-dot-product attention off its cuDNN backend (GPU only), then restore.

    Batches are padded to their own longest item, so attention shapes change from step to step
    (audio above all), and the cuDNN backend plans anew for each new shape: on one H100 with
    torch 2.11 that cost 12-17 ms of CPU per attention call, and the audio+molecule demo trained
    at 139 samples/s with it against 415 without it (flash and memory-efficient kernels need no
    planning); vision was unchanged.
    """
    import torch

    previous = torch.backends.cuda.cudnn_sdp_enabled()
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(previous)


def train(cfg: dict[str, Any], out_dir: Path, model: Any = None) -> dict[str, Any]:
    """Train, evaluate and save one run described by the plain-dict config ``cfg``.

    ``model`` (an :class:`~omnimodal.model.OmniModel` in memory) replaces building one (or
    ``init_from``). Returns the run summary written to ``result.json``, plus ``"model"`` (the
    trained model, rank 0 only), which is not written.
    """
    with no_cudnn_attention():
        return _train(cfg, out_dir, model)


def _train(cfg: dict[str, Any], out_dir: Path, given: Any = None) -> dict[str, Any]:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor

    from omnimodal.data import feature_cache
    from omnimodal.decoder import add_placeholders
    from omnimodal.errors import ConfigError, EvaluationError
    from omnimodal.eval.heldout import blind_baseline, evaluate, format_table
    from omnimodal.model import OmniModel, build_modalities
    from omnimodal.training import kit
    from omnimodal.training.datamodule import OmniDataModule
    from omnimodal.training.module import (
        FSDPLightningModule,
        OmniLightningModule,
        trained_model,
    )
    from omnimodal.training.plot import plot_losses
    from omnimodal.training.signature import data_signature, tokenizer_hash

    t0 = time.time()
    _quiet_logs()
    L.seed_everything(int(cfg.get("seed", 0)), workers=True)
    if not cfg.get("modalities"):
        raise ConfigError("no modalities selected: use modalities=[vision,...]")
    check_available(list(cfg["modalities"]))
    files = resolve_files(cfg)
    model_cfg = {"decoder": cfg["decoder"], "modalities": cfg["modalities"]}
    grad_ckpt = bool(cfg["decoder"].get("gradient_checkpointing", False))
    if given is not None:
        if set(given.modalities) != set(cfg["modalities"]):
            raise ConfigError(f"model= has modalities {sorted(given.modalities)} but the run selects {sorted(cfg['modalities'])}")
        model = given
        tokenizer, modalities = model.tokenizer, model.modalities
        build = model
    elif cfg.get("init_from"):
        model = load_init(cfg)
        tokenizer, modalities = model.tokenizer, model.modalities
        build = model
    else:
        modalities = build_modalities(cfg["modalities"])
        tokenizer = run_tokenizer(cfg, out_dir, files, modalities)

        def build() -> OmniModel:
            if cache is not None:
                return cache.build(model_cfg, tokenizer, modalities)
            return OmniModel.from_config(model_cfg, tokenizer=tokenizer, modalities=modalities)

    cache = feature_cache.plan(cfg, modalities)
    if cache is not None and isinstance(build, OmniModel):
        cache.attach(build)
    placeholder_ids = add_placeholders(tokenizer, [m.placeholder for m in modalities.values()])
    dm = OmniDataModule({**cfg["data"], "seed": int(cfg.get("seed", 0))}, files, tokenizer, modalities, placeholder_ids)
    dm.feature_cache = cache
    fsdp = "fsdp" in str(cfg["trainer"].get("strategy", "")).lower()
    module_cls = FSDPLightningModule if fsdp else OmniLightningModule
    trainer_cfg = dict(cfg["trainer"])
    skip_nonfinite = bool(trainer_cfg.pop("skip_nonfinite", False))  # omnimodal's, not Lightning's
    compile_decoder = trainer_cfg.pop("compile", False)  # omnimodal's too
    signature = {**model_signature(cfg), "tokenizer": tokenizer_hash(tokenizer), **data_signature(files)}
    pretrain = pretrain_config(cfg, fresh=given is None and not cfg.get("init_from"))
    module = module_cls(build, cfg["stage"], cfg["modalities"], signature, skip_nonfinite=skip_nonfinite, compile=compile_decoder,
                        pretrain_encoders=pretrain)

    ckpt_cfg = cfg.get("checkpoint") or {}
    start_report, throughput = kit.callbacks(files, cfg["stage"], gradient_checkpointing=grad_ckpt)
    callbacks = [
        *kit.checkpoint_callbacks(out_dir / "checkpoints", monitor="val/loss" if files.get("val") else None,
                                  every_n_train_steps=ckpt_cfg.get("every_n_train_steps")),
        LearningRateMonitor(logging_interval="step"),
        throughput,
        start_report,
        *([cache.callback()] if cache is not None else []),
    ]
    # A resumed run logs beside the killed run's logs instead of overwriting them.
    resumes = len(list((out_dir / "logs").glob("resumed-*"))) + 1 if cfg.get("ckpt_path") else 0
    version = f"resumed-{resumes}" if resumes else ""
    loggers = [L.pytorch.loggers.CSVLogger(out_dir, name="logs", version=version)]
    try:
        loggers.append(L.pytorch.loggers.TensorBoardLogger(out_dir, name="tensorboard", version=version))
    except ModuleNotFoundError:
        log.info("tensorboard not installed: CSV logs only")
    trainer = L.Trainer(default_root_dir=out_dir, callbacks=callbacks, logger=loggers, plugins=[kit.checkpoint_io()], **trainer_cfg)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        last = out_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ConfigError(f"ckpt_path=last: no {last}; resume in the killed run's directory (hydra.run.dir=<run dir>)")
        ckpt_path = str(last)
    startup.resume()  # the CLI's start-up is over: freeze its heap, collect garbage from here on
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    result: dict[str, Any] = {"train_seconds": time.time() - t0, "global_step": trainer.global_step, "throughput": throughput.summary}
    if module.pretrain_summary:
        result["encoder_pretraining"] = module.pretrain_summary

    def rebuild() -> OmniModel:
        if given is not None:
            import copy

            return copy.deepcopy(given)
        return load_init(cfg) if cfg.get("init_from") else build()

    model = trained_model(trainer, module, rebuild)  # whole on rank 0 also under FSDP (a collective)
    if trainer.global_rank != 0:
        return result
    print(throughput.describe(), flush=True)
    if cache is not None:
        result["feature_cache"] = _cache_summary(cache, model, cfg)

    records = dm.load_records()
    baseline = blind_baseline(records["train"])
    model.extra["blind_baseline"] = baseline
    if module.data_events:
        events = ", ".join(f"{k}={v}" for k, v in sorted(module.data_events.items()))
        log.warning("data events over one pass of the training data (this rank): %s", events)
        print(f"data events over one pass of the training data: {events}", flush=True)
        result["data_events"] = module.data_events
    if module.nonfinite_skipped:
        skipped = module.nonfinite_skipped
        log.warning("%d step(s) skipped for a non-finite loss (trainer.skip_nonfinite): %s", len(skipped), "; ".join(skipped))
        print(f"skipped {len(skipped)} step(s) with a non-finite loss: " + "; ".join(skipped), flush=True)
        result["nonfinite_skipped"] = skipped
    if dm.report.total:
        log.warning(dm.report.summary())
    plot = plot_losses(sorted((out_dir / "logs").glob("**/metrics.csv")), out_dir / "loss.png")
    if plot:
        log.info("loss curves: %s", plot)
    # The model first: an evaluation that fails must not cost the user a run that trained fine.
    if cfg.get("save_model", True):
        lora_mode = cfg.get("save_lora", "merge")
        model.save_pretrained(out_dir / "model", lora=lora_mode)
        print(f"saved model to {out_dir / 'model'}", flush=True)
    eval_error = None
    if cfg.get("evaluate", True) and records.get("test"):
        try:
            model.to(torch.device("cpu"))
            table = evaluate(
                model, records["test"], baseline,
                batch_size=int(cfg["data"].get("eval_batch_size", 64)),
                max_new_tokens=int(cfg["data"].get("max_new_tokens", 8)),
                max_length=cfg["data"].get("max_length"),
                out_path=out_dir / "eval.json",
            )
            print("\n" + format_table(table) + "\n", flush=True)
            result["eval"] = table
        except Exception as exc:  # noqa: BLE001 - reported, and the exit code says so
            log.exception("evaluation failed")
            eval_error = f"{type(exc).__name__}: {exc}"
            result["eval_error"] = eval_error
    result["total_seconds"] = time.time() - t0
    result["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    result["model"] = model
    print(f"run dir: {out_dir}  ({result['total_seconds']:.0f} s)", flush=True)
    if eval_error is not None:
        saved = f"the model is saved in {out_dir / 'model'}; " if cfg.get("save_model", True) else ""
        raise EvaluationError(
            f"training finished but evaluation failed: {eval_error}. {saved}evaluate it again with "
            f"`omnimodal eval {out_dir}` once the cause is fixed"
        )
    return result


def _cache_summary(cache: Any, model: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Report the feature cache (and the memory ``mode=require`` saved); rebuild skipped towers
    so the saved model is whole."""
    from omnimodal.data.feature_cache import needs_towers_after as feature_cache_needs_towers

    print(cache.store.report.summary(), flush=True)
    saved = cache.describe_saved()
    if saved:
        print(saved, flush=True)
        if feature_cache_needs_towers(cfg):
            cache.restore_towers(model)  # after training: save and evaluate a whole model
    report = cache.store.report
    return {"hits": report.hits, "misses": report.misses, "written": report.written, "bad": report.bad,
            "towers_not_built": {n: i["parameters"] for n, i in cache.skipped_towers.items()}}


@hydra.main(version_base="1.3", config_path=str(core_config_dir()), config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (``omnimodal train``): a thin layer over :func:`omnimodal.fit`."""
    from omnimodal.api import fit
    from omnimodal.errors import EvaluationError, OmnimodalError

    plain = OmegaConf.to_container(cfg, resolve=True)
    try:
        fit(plain, output_dir=run_dir())
    except EvaluationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_EVAL_FAILED)
    except OmnimodalError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # DDP's re-launched ranks: the same start-up as `omnimodal train`
    with startup.command(pause_gc=True):
        main()
