"""`omnimodal train`: compose the config with Hydra, train with Lightning, evaluate, save.

Run as ``omnimodal train [overrides]`` or ``python -m omnimodal.train [overrides]``. Lightning's
DDP re-launches this very file for ranks above 0, with Hydra's run dir passed along.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from omnimodal.builtin import core_config_dir

log = logging.getLogger("omnimodal.train")


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


def train(cfg: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Train, evaluate and save one run described by the plain-dict config ``cfg``."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from omnimodal.data.dataset import answer_text, question_text
    from omnimodal.evaluate import blind_baseline, evaluate, format_table
    from omnimodal.model import OmniModel
    from omnimodal.training.datamodule import OmniDataModule
    from omnimodal.training.module import OmniLightningModule
    from omnimodal.training.throughput import ThroughputLogger

    t0 = time.time()
    L.seed_everything(int(cfg.get("seed", 0)), workers=True)
    if not cfg.get("modalities"):
        from omnimodal.errors import ConfigError

        raise ConfigError("no modalities selected: use modalities=[vision,...]")
    files = resolve_files(cfg)
    model_cfg = {"decoder": cfg["decoder"], "modalities": cfg["modalities"]}
    if cfg.get("init_from"):
        model = OmniModel.from_pretrained(cfg["init_from"])
    else:
        # The scratch tokenizer is trained on the training text; read it once here.
        from omnimodal.model import build_modalities
        from omnimodal.training.datamodule import read_split
        from omnimodal.data.records import SkipReport

        part_types = {m.part_type: n for n, m in build_modalities(cfg["modalities"]).items()}
        texts_records = read_split(files["train"], part_types, cfg["data"].get("on_error", "raise"), SkipReport())
        texts = [question_text(r) for r in texts_records] + [answer_text(r) for r in texts_records]
        model = OmniModel.from_config(model_cfg, texts=texts)
    model.extra["data"] = {split: [str(Path(f).resolve()) for f in fs] for split, fs in files.items()}
    dm = OmniDataModule(cfg["data"], files, model.tokenizer, model.modalities, model.placeholder_ids)
    module = OmniLightningModule(model, cfg["stage"], cfg["modalities"])
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2fM parameters (%.2fM trainable)", n_params / 1e6, sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6)

    trainer_cfg = dict(cfg["trainer"])
    callbacks = [
        ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=1, monitor="val/loss" if files.get("val") else None),
        LearningRateMonitor(logging_interval="step"),
        ThroughputLogger(),
    ]
    loggers = [L.pytorch.loggers.CSVLogger(out_dir, name="logs", version="")]
    trainer = L.Trainer(default_root_dir=out_dir, callbacks=callbacks, logger=loggers, **trainer_cfg)
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    result: dict[str, Any] = {"train_seconds": time.time() - t0}
    if trainer.global_rank != 0:
        return result

    records = dm.load_records()
    baseline = blind_baseline(records["train"])
    model.extra["blind_baseline"] = baseline
    for modality in model.modalities.values():
        if modality.counters:
            log.warning("%s: %s", modality.name, modality.counters)
    if dm.report.total:
        log.warning(dm.report.summary())
    if cfg.get("evaluate", True) and records.get("test"):
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
    if cfg.get("save_model", True):
        model.save_pretrained(out_dir / "model")
        print(f"saved model to {out_dir / 'model'}", flush=True)
    result["total_seconds"] = time.time() - t0
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(f"run dir: {out_dir}  ({result['total_seconds']:.0f} s)", flush=True)
    return result


@hydra.main(version_base="1.3", config_path=str(core_config_dir()), config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: resolve the config to plain containers, then train."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    train(plain, run_dir())


if __name__ == "__main__":
    main()
