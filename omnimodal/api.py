"""Compose, train and evaluate in code: what ``omnimodal train`` and ``omnimodal eval`` do, in-process.

::

    import omnimodal

    cfg = omnimodal.compose(["modalities=[vision]", "trainer.max_epochs=1"])
    run = omnimodal.fit(cfg)                       # same callbacks, checkpoints, eval.json, model/
    sft = omnimodal.fit(omnimodal.compose(["modalities=[vision]", "stage=sft"]), model=run.model)
    table = omnimodal.evaluate(sft.model, "test.jsonl")
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnimodal.errors import ConfigError, did_you_mean


def compose(overrides: Sequence[str] = (), config_name: str = "config"):
    """The run configuration Hydra composes for ``omnimodal train <overrides>`` (a ``DictConfig``).

    Uses Hydra's Compose API over the same config groups as the CLI, plugin groups included.
    Works inside an already-initialised Hydra context (a notebook's, or an ``@hydra.main`` app):
    that context is put back afterwards. A misspelt key, group or option fails with a
    :class:`~omnimodal.errors.ConfigError` that suggests the closest valid name.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from omegaconf.errors import OmegaConfBaseException

    from omnimodal.builtin import core_config_dir
    from omnimodal.cli import check_overrides
    from omnimodal.train import register_search_path_plugin

    overrides = list(overrides)
    register_search_path_plugin()
    check_overrides(overrides)  # unknown modality: the valid ones, before Hydra's own message
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(core_config_dir()), version_base="1.3", job_name="omnimodal"):
            try:
                return hydra_compose(config_name=config_name, overrides=overrides)
            except (HydraException, OmegaConfBaseException) as exc:
                raise ConfigError(_explain(exc, overrides)) from exc
    finally:
        restore_gh_from_backup(backup)


def _explain(exc: Exception, overrides: list[str]) -> str:
    """Hydra's message plus a did-you-mean for the misspelt key, group or option."""
    message = str(exc).strip()
    hint = ""
    options = re.search(r"Could not find '([^']+)/([^']+)'.*?Available options in '[^']+':\n((?:\t[^\n]*\n?)*)", message, re.S)
    missing_key = re.search(r"Key '([^']+)' is not in struct", message)
    override = re.search(r"Could not override '([^']+)'", message)
    if options:
        group, name, listed = options.groups()
        hint = did_you_mean(name, [o.strip() for o in listed.splitlines() if o.strip()])
        message = message.split("\nConfig search path")[0].strip()
    elif missing_key or override:
        dotted = (override.group(1) if override else missing_key.group(1)).lstrip("+~")
        hint = _key_hint(dotted, overrides)
    elif "No match in the defaults list" in message or "Could not append to config" in message:
        hint = _key_hint(message.split("'")[1] if "'" in message else "", overrides)
    return f"{message}{hint}" if hint else message


def _key_hint(dotted: str, overrides: list[str]) -> str:
    """Did-you-mean for ``a.b.c`` against the keys that exist at ``a.b`` in the composed config."""
    from omegaconf import OmegaConf

    parent, _, leaf = dotted.rpartition(".")
    try:
        base = compose([o for o in overrides if o.split("=")[0].lstrip("+~") != dotted])
    except ConfigError:
        return ""
    node = OmegaConf.select(base, parent) if parent else base
    if node is None or not hasattr(node, "keys"):
        return ""
    return did_you_mean(leaf, [str(k) for k in node.keys()])


@dataclass
class Run:
    """What :func:`fit` returns: the run directory, the trained model, its metrics and evaluation."""

    dir: Path
    model: Any  # OmniModel (None on DDP ranks above 0)
    metrics: dict[str, float] = field(default_factory=dict)  # last logged values (train/loss, val/loss...)
    eval: dict[str, Any] | None = None  # the eval.json table, when the run evaluated
    summary: dict[str, Any] = field(default_factory=dict)  # result.json


# Strategies that start one process per device by re-running the command line: from a script
# that is fine (each rank runs the script again), from a notebook or REPL it cannot work.
_RELAUNCHING = ("ddp", "ddp_spawn", "deepspeed", "fsdp", "ddp_find_unused_parameters_true")


def fit(cfg: Any, model: Any = None, output_dir: str | Path | None = None) -> Run:
    """Train in-process exactly as ``omnimodal train`` does (callbacks, checkpoints, eval.json, ``model/``).

    ``cfg`` is what :func:`compose` returns (or a plain dict of the same shape). ``model`` starts
    from a model in memory (e.g. ``run.model`` of an earlier stage) instead of building one.
    ``output_dir`` defaults to ``outputs/<date>/<time>`` under the working directory, as the CLI.

    What it changes it puts back when it returns: logging levels and handlers, warning filters,
    environment variables (``PL_GLOBAL_SEED``...) and the random generators of ``random``, NumPy
    and torch. It does not change the working directory. Single-process training and
    Lightning's ``ddp_notebook`` work here; a strategy that relaunches the command line
    (``ddp``, ``fsdp``, ``deepspeed`` on several devices) works from a script, not from a
    notebook or REPL (then a :class:`~omnimodal.errors.ConfigError` says how to launch it).
    """
    import datetime

    from omegaconf import DictConfig, OmegaConf

    from omnimodal.train import train

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    plain.pop("hydra", None)
    _check_strategy(plain.get("trainer") or {})
    if output_dir is None:
        output_dir = Path("outputs") / datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with _restored_state():
        result = train(plain, out, model=model)
    trained = result.pop("model", None)
    return Run(dir=out, model=trained, metrics=dict(result.get("metrics") or {}), eval=result.get("eval"), summary=result)


def _check_strategy(trainer: dict[str, Any]) -> None:
    from lightning.fabric.utilities.imports import _IS_INTERACTIVE

    strategy = str(trainer.get("strategy", "auto")).lower()
    devices = trainer.get("devices", 1)
    several = str(devices) not in ("1", "auto", "[0]") or int(trainer.get("num_nodes", 1) or 1) > 1
    if _IS_INTERACTIVE and several and strategy in _RELAUNCHING:
        raise ConfigError(
            f"trainer.strategy={strategy} starts one process per device by re-running the command line, "
            "which a notebook or REPL cannot do. Use trainer.strategy=ddp_notebook here, or put the "
            "fit() call in a script and run it with python (or run `omnimodal train ...`)."
        )


@contextmanager
def _restored_state() -> Iterator[None]:
    """Put back logging, warning filters, environment variables and RNG states on exit."""
    import logging
    import os
    import random
    import warnings

    import numpy as np
    import torch

    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    saved_logs = [(lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers]
    environ = dict(os.environ)
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
           torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    with warnings.catch_warnings():
        try:
            yield
        finally:
            for lg, level, handlers, propagate, disabled in saved_logs:
                lg.setLevel(level)
                lg.handlers[:] = handlers
                lg.propagate, lg.disabled = propagate, disabled
            for key in set(os.environ) - set(environ):
                del os.environ[key]
            os.environ.update(environ)
            random.setstate(rng[0])
            np.random.set_state(rng[1])
            torch.set_rng_state(rng[2])
            if rng[3] is not None:
                torch.cuda.set_rng_state_all(rng[3])


def evaluate(
    model_or_pipeline: Any,
    data: str | Path | Sequence[str | Path] | Sequence[Any],
    train: str | Path | Sequence[str | Path] | None = None,
    batch_size: int = 64,
    max_new_tokens: int = 8,
    out_path: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate like ``omnimodal eval``: accuracy per modality and question kind, beside the blind baseline.

    ``data`` is a JSONL file (or several) or a list of :class:`~omnimodal.data.records.Record`.
    The blind baseline comes from ``train`` (files) when given, else from the one the model
    stored when it was trained. Returns the same structure as ``eval.json`` (written to
    ``out_path`` when given).
    """
    import importlib

    from omnimodal.data.records import Record, read_jsonl

    exact = importlib.import_module(_EXACT_MODULE)
    model = getattr(model_or_pipeline, "model", model_or_pipeline)
    part_types = {m.part_type: n for n, m in model.modalities.items()}

    def records_of(value) -> list[Record]:
        items = [value] if isinstance(value, (str, Path)) else list(value)
        out: list[Record] = []
        for item in items:
            out.extend([item] if isinstance(item, Record) else read_jsonl(item, part_types))
        return out

    if train is not None:
        baseline = exact.blind_baseline(records_of(train))
    else:
        baseline = model.extra.get("blind_baseline")
        if baseline is None:
            raise ConfigError("this model stores no blind baseline (it was not trained by omnimodal): pass train=<train.jsonl>")
    return exact.evaluate(model, records_of(data), baseline, batch_size=batch_size, max_new_tokens=max_new_tokens,
                          out_path=Path(out_path) if out_path is not None else None)


# Where exact-match evaluation lives (the module moves into omnimodal/eval/ with task files).
_EXACT_MODULE = "omnimodal.eval.heldout"
