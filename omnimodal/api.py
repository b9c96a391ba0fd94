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
from collections.abc import Sequence
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
_EXACT_MODULE = "omnimodal.evaluate"
