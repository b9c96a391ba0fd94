"""Encoder feature cache: a frozen encoder's output per item, computed once, stored on disk.

It sits between ``prepare`` and the encoder::

    prepare (data workers)  -> item key = hash of the preprocessed features      (Collator)
    before the batch moves  -> hits read from the epoch's snapshot of the cache  (resolve)
    encode_media            -> encoder runs on the misses only; they are written  (encode)

The full key of an entry is ``<context>-<item>``: the *context* hashes the modality's config
(preprocessing and encoder; not the projector, not the trainable switches), the encoder's
weights (or, for ``mode=require``, the fingerprint of the weight files it was built from) and
the numerics (stored dtype, trainer precision, device type); the *item* hashes the item's
preprocessed tensors, so a changed file or preprocessing setting is a different key.

On disk (``data.feature_cache=<dir>``)::

    <dir>/shards/<commit ns>-r<rank>-p<pid>-<rand>.safetensors   entries, written atomically
    <dir>/contexts/<context>.json                                what each context was built from

Each shard carries a blake2b checksum per entry in its metadata, checked on every read: a bad
or torn entry is reported and recomputed (``mode=require``: an error), never used.

Deterministic hits: an epoch uses only the shards committed before it started (the cutoff is
kept in the checkpoint, so a resumed epoch sees the same snapshot); entries computed during an
epoch are written for the next one. Whether an item hits never depends on worker timing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from omnimodal.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT = "omnimodal-feature-cache/1"
CACHE_KEY = "_feature_cache"  # media[name][CACHE_KEY]: what the Collator hands a cached modality
MODES = ("auto", "require")
FLUSH_EVERY = 512  # entries per shard written mid-epoch
_NOT_IN_KEY = ("projector", "train_encoder")  # switches and parts after the encoder


# ---- keys ---------------------------------------------------------------------------------
def _feed(h, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too (BatchNorm counts)
    elif isinstance(value, dict):
        h.update(b"D")
        for k in sorted(value):
            h.update(str(k).encode())
            _feed(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for v in value:
            _feed(h, v)
    elif hasattr(value, "to_dict") and callable(value.to_dict):  # e.g. a torch-geometric Data
        _feed(h, value.to_dict())
    else:
        h.update(repr(value).encode())


def item_key(features: dict[str, Any]) -> str:
    """Hash of one item's preprocessed features (tensor bytes, dtypes, shapes, other values)."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, features)
    return h.hexdigest()


def weights_hash(module: torch.nn.Module) -> str:
    """Hash of a module's state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        _feed(h, t)
    return h.hexdigest()


def _file_fingerprint(value: Any) -> Any:
    """For a config value naming a local file or directory: its files' names, sizes, mtimes."""
    if not isinstance(value, str) or not value or len(value) > 4096:
        return None
    path = Path(value).expanduser()
    try:
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
        else:
            return None
    except OSError:
        return None
    return [(str(p.relative_to(path) if p != path else p.name), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def config_fingerprint(modality_cfg: dict[str, Any]) -> dict[str, Any]:
    """The modality config as it enters the key: without the projector and trainable switches,
    plus the fingerprint of every local file or directory the encoder config names."""
    cfg = {k: v for k, v in modality_cfg.items() if k not in _NOT_IN_KEY}
    files = {}
    for k, v in (cfg.get("encoder") or {}).items():
        fp = _file_fingerprint(v)
        if fp is not None:
            files[k] = fp
    return {"config": json.loads(json.dumps(cfg, sort_keys=True, default=str)), "files": files}


@dataclass(frozen=True)
class Numerics:
    """What changes the numbers an encoder gives besides its weights."""

    dtype: str | None  # stored dtype (None: as the encoder returns it)
    precision: str  # the trainer's precision ("32-true", "bf16-mixed"...)
    device_type: str  # "cpu", "cuda"...

    def as_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "precision": self.precision, "device_type": self.device_type}


def _digest(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=8).hexdigest()


def context_key(modality_cfg: dict[str, Any], numerics: Numerics, weights: str) -> str:
    """The per-modality part of every entry key."""
    return _digest({"modality": config_fingerprint(modality_cfg), "numerics": numerics.as_dict(), "weights": weights})


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``data.feature_cache_dtype`` -> a torch dtype (None: the compute dtype)."""
    if name in (None, "", "null", "auto"):
        return None
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if name not in table:
        raise ConfigError(f"data.feature_cache_dtype={name!r}: use one of {sorted(table)} or null (the compute dtype)")
    return table[name]


def _checksum(features: torch.Tensor, mask: torch.Tensor) -> str:
    h = hashlib.blake2b(digest_size=16)
    _feed(h, features)
    _feed(h, mask)
    return h.hexdigest()


# ---- the store ----------------------------------------------------------------------------
@dataclass
class CacheReport:
    """What happened to the cache in this process (hits, misses, writes, bad entries)."""

    hits: int = 0
    misses: int = 0
    written: int = 0
    bytes_written: int = 0
    bad: list[str] = field(default_factory=list)

    def summary(self) -> str:
        bad = f", {len(self.bad)} bad entries recomputed ({'; '.join(self.bad[:3])})" if self.bad else ""
        return f"feature cache: {self.hits} hits, {self.misses} misses, {self.written} entries written ({self.bytes_written / 2**20:.1f} MiB){bad}"


class FeatureCache:
    """The shards under one cache directory: a snapshot index for reads, a buffer for writes."""

    def __init__(self, root: str | Path, rank: int = 0):
        self.root = Path(root).expanduser()
        self.shards = self.root / "shards"
        self.contexts = self.root / "contexts"
        self.rank = rank
        self.index: dict[str, list[tuple[Path, str, str]]] = {}  # key -> (shard, name, checksum)
        self._open: dict[Path, Any] = {}  # shard -> open safetensors handle (memory-mapped)
        self.cutoff_ns: int | None = None
        self.pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.written: set[str] = set()
        self.report = CacheReport()
        self._skipped_shards: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}  # open handles stay in their process

    # -- snapshot
    def shard_files(self, cutoff_ns: int | None = None) -> list[Path]:
        """Committed shards, oldest first (those committed before ``cutoff_ns`` if given)."""
        if not self.shards.is_dir():
            return []
        out = []
        for p in sorted(self.shards.glob("*.safetensors")):
            try:
                committed = int(p.name.split("-", 1)[0])
            except ValueError:
                continue
            if cutoff_ns is None or committed < cutoff_ns:
                out.append(p)
        return out

    def snapshot(self, cutoff_ns: int) -> int:
        """Index the entries of every shard committed before ``cutoff_ns``; returns their count."""
        from safetensors import safe_open

        self.cutoff_ns = cutoff_ns
        self._open.clear()
        index: dict[str, list[tuple[Path, str, str]]] = {}
        for path in self.shard_files(cutoff_ns):
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
            except Exception as exc:  # noqa: BLE001 - a torn shard is reported, its entries are misses
                if str(path) not in self._skipped_shards:
                    self._skipped_shards.add(str(path))
                    log.warning("feature cache: shard %s is unreadable (%s); its entries will be recomputed", path, exc)
                    self.report.bad.append(f"{path.name}: unreadable")
                continue
            if meta.get("format") != FORMAT:
                continue
            for key, checksum in json.loads(meta.get("checksums", "{}")).items():
                index.setdefault(key, []).append((path, key, checksum))
        self.index = index
        return len(index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def read(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """An entry of the snapshot, checksum verified; ``None`` (and reported) when bad or absent."""
        from safetensors import safe_open

        for path, name, want in self.index.get(key, ()):
            try:
                if path not in self._open:
                    self._open[path] = safe_open(str(path), framework="pt")
                f = self._open[path]
                features, mask = f.get_tensor(f"{name}.f"), f.get_tensor(f"{name}.m")
            except Exception as exc:  # noqa: BLE001 - torn file: reported, recomputed
                self._bad(key, path, f"unreadable ({type(exc).__name__})")
                continue
            if _checksum(features, mask) != want:
                self._bad(key, path, "checksum mismatch")
                continue
            return features, mask
        return None

    def _bad(self, key: str, path: Path, why: str) -> None:
        msg = f"{path.name}:{key}: {why}"
        log.warning("feature cache: entry %s; recomputing it", msg)
        self.report.bad.append(msg)
        self.index[key] = [loc for loc in self.index.get(key, ()) if loc[0] != path]
        if not self.index[key]:
            del self.index[key]

    # -- writes
    def put(self, key: str, features: torch.Tensor, mask: torch.Tensor) -> None:
        """Buffer one entry for the next shard (once per key per process)."""
        if key in self.written or key in self.pending:
            return
        self.pending[key] = (features.detach().to("cpu").contiguous(), mask.detach().to("cpu", torch.bool).contiguous())
        if len(self.pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> Path | None:
        """Write the buffered entries as one shard: a temporary file, then an atomic rename whose
        name carries the commit time (read by later snapshots only)."""
        if not self.pending:
            return None
        from safetensors.torch import save_file

        self.shards.mkdir(parents=True, exist_ok=True)
        tensors, sums = {}, {}
        for key, (features, mask) in self.pending.items():
            tensors[f"{key}.f"], tensors[f"{key}.m"] = features, mask
            sums[key] = _checksum(features, mask)
        tmp = self.shards / f".tmp-r{self.rank}-p{os.getpid()}-{uuid.uuid4().hex[:8]}"
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "checksums": json.dumps(sums)})
        size = tmp.stat().st_size
        final = self.shards / f"{time.time_ns():020d}-r{self.rank}-p{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        os.replace(tmp, final)
        self.report.written += len(self.pending)
        self.report.bytes_written += size
        self.written.update(self.pending)
        self.pending.clear()
        return final

    # -- contexts
    def write_context(self, key: str, info: dict[str, Any]) -> None:
        """Record what a context was built from (``mode=require`` finds its context here)."""
        self.contexts.mkdir(parents=True, exist_ok=True)
        path = self.contexts / f"{key}.json"
        if not path.is_file():
            tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}")
            tmp.write_text(json.dumps(info, indent=2, sort_keys=True))
            os.replace(tmp, path)

    def find_context(self, name: str, modality_cfg: dict[str, Any], numerics: Numerics) -> tuple[str, dict[str, Any]]:
        """The context of a tower that is not built (``mode=require``): by config and numerics."""
        want = {"modality": config_fingerprint(modality_cfg), "numerics": numerics.as_dict()}
        found = []
        for path in sorted(self.contexts.glob("*.json")) if self.contexts.is_dir() else []:
            info = json.loads(path.read_text())
            if {"modality": info.get("modality"), "numerics": info.get("numerics")} == json.loads(json.dumps(want, sort_keys=True)):
                found.append((path.stem, info))
        if not found:
            raise ConfigError(
                f"data.feature_cache_mode=require: {self.root} holds no features of modality {name!r} for this "
                "encoder config and precision; fill it first with `omnimodal cache build <same overrides>`"
            )
        if len(found) > 1:
            raise ConfigError(
                f"data.feature_cache_mode=require: {self.root} holds features of {name!r} from {len(found)} different "
                f"encoder weights with this config ({', '.join(k for k, _ in found)}); clear the stale ones "
                f"(rm -r {self.contexts}/<key>.json and the cache) or use data.feature_cache_mode=auto"
            )
        return found[0]


# ---- per-modality runtime -----------------------------------------------------------------
class CachedTower(torch.nn.Module):
    """Stands in for a frozen tower that ``mode=require`` never builds: no weights, no forward."""

    def __init__(self, name: str, out_dim: int):
        super().__init__()
        self.name = name
        self.out_dim = out_dim

    def forward(self, **_: Any):
        raise DataError(f"{self.name}: the encoder was not built (data.feature_cache_mode=require) and an item missed the cache")


@dataclass
class ModalityCache:
    """One modality's view of the cache: its context key, mode and stored dtype."""

    name: str
    store: FeatureCache
    context: str
    mode: str = "auto"
    dtype: torch.dtype | None = None

    def entry(self, item: str) -> str:
        return f"{self.context}-{item}"

    def resolve(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Fill ``hits`` from the snapshot and drop the raw features of hit items (in place)."""
        info = batch[CACHE_KEY]
        if info.get("resolved"):
            return batch
        hits = []
        for i, key in enumerate(info["keys"]):
            got = self.store.read(self.entry(key)) if self.entry(key) in self.store else None
            hits.append(got)
            if got is not None:
                info["items"][i] = None
        info["hits"] = hits
        info["resolved"] = True
        n_hit = sum(h is not None for h in hits)
        self.store.report.hits += n_hit
        self.store.report.misses += len(hits) - n_hit
        if self.mode == "require" and n_hit < len(hits):
            missing = [info["sources"][i] for i, h in enumerate(hits) if h is None]
            raise DataError(
                f"{self.name}: {len(missing)} item(s) not in the feature cache {self.store.root} "
                f"(data.feature_cache_mode=require), first: {missing[0]}; fill it with `omnimodal cache build`"
            )
        return batch

    def encode(self, encoder: torch.nn.Module, collate: Callable[[list[dict[str, Any]]], dict[str, Any]], batch: dict[str, Any], out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (``out_dtype``) and mask for the batch: hits from the cache, misses through
        ``encoder`` (buffered for the next epoch, and rounded to the stored dtype as hits are)."""
        info = self.resolve(batch)[CACHE_KEY]
        hits = list(info["hits"])
        miss = [i for i, h in enumerate(hits) if h is None]
        device = _device_of(encoder, hits)
        if miss:
            raw = _to(collate([info["items"][i] for i in miss]), device)
            features, mask = encoder(**raw)
            for j, i in enumerate(miss):
                row_mask = mask[j].bool()
                n = int(row_mask.nonzero().max()) + 1 if row_mask.any() else 0
                f = features[j, :n].detach()
                f = f.to(self.dtype) if self.dtype is not None else f
                hits[i] = (f, row_mask[:n])
                self.store.put(self.entry(info["keys"][i]), f, row_mask[:n])
        return _pad_rows(hits, device, out_dtype)


def _device_of(encoder: torch.nn.Module, hits: list) -> torch.device:
    for p in encoder.parameters():
        return p.device
    for buf in encoder.buffers():
        return buf.device
    return next((h[0].device for h in hits if h is not None), torch.device("cpu"))


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor) or hasattr(obj, "to") and not isinstance(obj, (dict, list, tuple)):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def _pad_rows(rows: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-item ``(features [L_i, d], mask [L_i])`` into ``[N, max L, d]`` and ``[N, max L]``."""
    longest = max(f.shape[0] for f, _ in rows)
    d = rows[0][0].shape[-1]
    features = torch.zeros(len(rows), longest, d, dtype=dtype, device=device)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool, device=device)
    for i, (f, m) in enumerate(rows):
        features[i, : f.shape[0]] = f.to(device=device, dtype=dtype)
        mask[i, : m.shape[0]] = m.to(device)
    return features, mask


def cached_media(name: str, items: list[Any]) -> dict[str, Any]:
    """What the Collator hands a cached modality: item keys, sources and the raw features."""
    return {CACHE_KEY: {"keys": [item_key(it.features) for it in items], "sources": [it.source for it in items],
                        "items": [it.features for it in items], "modality": name}}


def resolve_batch(batch: Any, caches: dict[str, ModalityCache]) -> Any:
    """Before a batch moves to the device: read its hits and drop their raw features."""
    media = batch.get("media") if isinstance(batch, dict) else None
    for name, cache in caches.items():
        if media and name in media and CACHE_KEY in media[name]:
            cache.resolve(media[name])
    return batch


# ---- run setup ----------------------------------------------------------------------------
def _device_type(trainer_cfg: dict[str, Any]) -> str:
    acc = str(trainer_cfg.get("accelerator", "auto")).lower()
    if acc in ("gpu", "cuda"):
        return "cuda"
    if acc == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return acc


def _tower_info(name: str, modality_cfg: dict[str, Any], numerics: Numerics, encoder: torch.nn.Module, weights: str) -> dict[str, Any]:
    params = sum(p.numel() for p in encoder.parameters())
    size = sum(p.numel() * p.element_size() for p in encoder.parameters()) + sum(b.numel() * b.element_size() for b in encoder.buffers())
    return {"modality": json.loads(json.dumps(config_fingerprint(modality_cfg), sort_keys=True)), "numerics": numerics.as_dict(),
            "weights": weights, "name": name, "out_dim": int(encoder.out_dim), "parameters": params, "bytes": size}


@dataclass
class CacheSetup:
    """The feature cache of one run: which modalities use it, how, and the live store."""

    store: FeatureCache
    names: list[str]
    mode: str
    dtype: torch.dtype | None
    numerics: Numerics
    modality_cfgs: dict[str, dict[str, Any]]
    caches: dict[str, ModalityCache] = field(default_factory=dict)
    skipped_towers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def active(self) -> frozenset[str]:
        return frozenset(self.names)

    def attach(self, model: Any) -> Any:
        """Give ``model`` its per-modality caches (hashing each built tower's weights)."""
        caches = {}
        for name in self.names:
            encoder = model.encoders[name]
            if isinstance(encoder, CachedTower):
                key, info = self.store.find_context(name, self.modality_cfgs[name], self.numerics)
                self.skipped_towers[name] = info
            else:
                weights = weights_hash(encoder)
                key = context_key(self.modality_cfgs[name], self.numerics, weights)
                self.store.write_context(key, _tower_info(name, self.modality_cfgs[name], self.numerics, encoder, weights))
            caches[name] = ModalityCache(name, self.store, key, self.mode, self.dtype)
        model.feature_caches = caches
        self.caches = caches
        return model

    def build(self, model_cfg: dict[str, Any], tokenizer, modalities: dict[str, Any]):
        """The model, with the cached towers left unbuilt under ``mode=require``."""
        from omnimodal.model import OmniModel

        if self.mode != "require":
            return self.attach(OmniModel.from_config(model_cfg, tokenizer=tokenizer, modalities=modalities))
        return self.attach(build_without_towers(model_cfg, tokenizer, modalities, {
            name: self.store.find_context(name, self.modality_cfgs[name], self.numerics)[1] for name in self.names}))

    def describe_saved(self) -> str | None:
        """The memory ``mode=require`` saved by not building towers (None when it built them)."""
        if not self.skipped_towers:
            return None
        parts = [f"{n} ({i['parameters'] / 1e6:.1f}M parameters, {i['bytes'] / 2**20:.1f} MiB)" for n, i in self.skipped_towers.items()]
        return f"feature cache: trained without building the frozen tower(s) {', '.join(parts)}"

    def restore_towers(self, model: Any) -> None:
        """Before saving a ``mode=require`` model: build its towers (after training) and check
        their weights are the ones the cache was filled with."""
        from omnimodal.modality import build_encoder_checked

        for name, info in self.skipped_towers.items():
            encoder = build_encoder_checked(model.modalities[name], load_weights=True)
            if weights_hash(encoder) != info["weights"]:
                raise ConfigError(f"{name}: the tower built for saving has other weights than the cached features came from; the model is not saved")
            device = next(model.projectors[name].parameters()).device
            model.encoders[name] = encoder.to(device).eval().requires_grad_(False)

    def callback(self):
        """The Lightning callback that takes each epoch's snapshot and flushes new entries."""
        return _callback(self)


def build_without_towers(model_cfg: dict[str, Any], tokenizer, modalities: dict[str, Any], towers: dict[str, dict[str, Any]]):
    """:meth:`OmniModel.from_config`, with a :class:`CachedTower` for each modality in ``towers``."""
    from omnimodal.decoder import add_placeholders, build_decoder
    from omnimodal.modality import build_encoder_checked
    from omnimodal.model import OmniModel, _projector_cfg
    from omnimodal.projectors import build_projector

    dcfg = dict(model_cfg["decoder"])
    add_placeholders(tokenizer, [m.placeholder for m in modalities.values()])
    decoder = build_decoder(dcfg, tokenizer)
    encoders, projectors = {}, {}
    for name, modality in modalities.items():
        encoders[name] = CachedTower(name, towers[name]["out_dim"]) if name in towers else build_encoder_checked(modality)
        projectors[name] = build_projector(_projector_cfg(modality), encoders[name].out_dim, decoder.config.hidden_size)
    return OmniModel(decoder, tokenizer, modalities, encoders, projectors, dcfg)


def plan(cfg: dict[str, Any], modalities: dict[str, Any]) -> CacheSetup | None:
    """The run's feature cache from ``data.feature_cache*`` (None when off). Logs, once per
    modality, why a modality does not use it (its encoder trains; its plugin opts out)."""
    data = cfg.get("data") or {}
    root = data.get("feature_cache")
    if not root:
        return None
    mode = data.get("feature_cache_mode") or "auto"
    if mode not in MODES:
        raise ConfigError(f"data.feature_cache_mode must be one of {', '.join(MODES)}, got {mode!r}")
    stage = cfg.get("stage") or {}
    names = []
    for name, modality in modalities.items():
        trains = bool(stage.get("train_encoders", True)) and bool(modality.cfg.get("train_encoder", True))
        if trains:
            log.info("feature cache: %s ignores it: its encoder trains (stage %s)", name, stage.get("name", "?"))
        elif not getattr(modality.spec, "feature_cache", True):
            log.info("feature cache: %s ignores it: its plugin opts out (ModalitySpec.feature_cache=False, e.g. random augmentation)", name)
        else:
            names.append(name)
    if not names:
        return None
    dtype = parse_dtype(data.get("feature_cache_dtype"))
    numerics = Numerics(str(dtype).removeprefix("torch.") if dtype is not None else None, str((cfg.get("trainer") or {}).get("precision", "32-true")), _device_type(cfg.get("trainer") or {}))
    setup = CacheSetup(FeatureCache(root), names, mode, dtype, numerics, {n: modalities[n].cfg for n in names})
    if mode == "require" and needs_towers_after(cfg):
        for name in names:
            if not config_fingerprint(modalities[name].cfg)["files"]:
                raise ConfigError(
                    f"data.feature_cache_mode=require: {name}'s encoder is built from a random init, so it cannot be rebuilt "
                    "after training to save or evaluate the model; use a pretrained tower (encoder.path), "
                    "save_model=false evaluate=false, or feature_cache_mode=auto"
                )
    log.info("feature cache: %s at %s (mode %s)", ", ".join(names), setup.store.root, mode)
    return setup


def needs_towers_after(cfg: dict[str, Any]) -> bool:
    """Whether the run uses the whole model after training (saving it, or evaluating it)."""
    return bool(cfg.get("save_model", True)) or (bool(cfg.get("evaluate", True)) and bool((cfg.get("data") or {}).get("test")))


def _callback(setup: CacheSetup):
    import lightning as L

    class FeatureCacheCallback(L.Callback):
        """Snapshot at each epoch start (cutoff kept in checkpoints), flush at epoch end and saves."""

        def __init__(self) -> None:
            self.cutoffs: dict[int, int] = {}

        def state_dict(self) -> dict[str, Any]:
            return {"cutoffs": {str(k): v for k, v in self.cutoffs.items()}}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.cutoffs = {int(k): int(v) for k, v in (state.get("cutoffs") or {}).items()}

        def setup(self, trainer, pl_module, stage: str) -> None:
            setup.store.rank = trainer.global_rank

        def _snapshot(self, trainer, epoch: int) -> None:
            cutoff = self.cutoffs.get(epoch)
            if cutoff is None:
                cutoff = int(trainer.strategy.broadcast(time.time_ns(), src=0))  # every rank, one snapshot
                self.cutoffs[epoch] = cutoff
            n = setup.store.snapshot(cutoff)
            log.info("feature cache: epoch %d reads %d entries committed before it started", epoch, n)

        def on_fit_start(self, trainer, pl_module) -> None:
            self._snapshot(trainer, trainer.current_epoch)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._snapshot(trainer, trainer.current_epoch)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            setup.store.flush()

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            setup.store.flush()  # what was computed before a checkpoint survives a kill after it

        def on_fit_end(self, trainer, pl_module) -> None:
            setup.store.flush()

        def on_exception(self, trainer, pl_module, exception) -> None:
            setup.store.flush()

    return FeatureCacheCallback()


# ---- omnimodal cache build ----------------------------------------------------------------
def _numerics_context(precision: str, device_type: str):
    """The autocast context the trainer's precision implies for the encoder forward."""
    import contextlib

    if precision.endswith("-mixed"):
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        return torch.autocast(device_type, dtype=dtype)
    return contextlib.nullcontext()


def build_cache(cfg: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Fill the cache for every split of ``cfg`` (the same config ``omnimodal train`` takes):
    print the size estimate first, then encode each item that is not cached yet."""
    import lightning as L
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from omnimodal.data.dataset import Collator, training_texts
    from omnimodal.data.records import SkipReport
    from omnimodal.decoder import add_placeholders
    from omnimodal.model import build_modalities, build_tokenizer
    from omnimodal.train import resolve_files
    from omnimodal.training.datamodule import OmniDataModule, data_workers, read_split

    cfg = copy_cfg(cfg)
    cfg["data"]["feature_cache_mode"] = "auto"
    if not cfg["data"].get("feature_cache"):
        raise ConfigError("omnimodal cache build needs data.feature_cache=<dir>")
    L.seed_everything(int(cfg.get("seed", 0)), workers=True)  # as `train` does: a scratch tower gets the same init
    files = resolve_files(cfg)
    modalities = build_modalities(cfg["modalities"])
    setup = plan(cfg, modalities)
    if setup is None:
        raise ConfigError(f"no modality of this run can use the feature cache: every encoder trains in stage {cfg['stage'].get('name')!r} (use stage=align, sft or lora)")
    texts = None
    if cfg["decoder"].get("kind") == "scratch":
        part_types = {m.part_type: n for n, m in modalities.items()}
        texts = training_texts(read_split(files["train"], part_types, cfg["data"].get("on_error", "raise"), SkipReport(), cfg["data"]))
    tokenizer = build_tokenizer(cfg["decoder"], texts)
    model = setup.build({"decoder": cfg["decoder"], "modalities": cfg["modalities"]}, tokenizer, modalities)
    device = torch.device(setup.numerics.device_type if setup.numerics.device_type != "cpu" else "cpu")
    if str(setup.numerics.precision).endswith("-true") and not str(setup.numerics.precision).startswith("32"):
        model.to(torch.bfloat16 if "bf16" in setup.numerics.precision else torch.float16)
    model.to(device).eval()
    placeholder_ids = add_placeholders(tokenizer, [m.placeholder for m in modalities.values()])
    dm = OmniDataModule({**cfg["data"], "seed": int(cfg.get("seed", 0))}, files, tokenizer, modalities, placeholder_ids)
    collate = Collator(modalities, tokenizer.pad_token_id, cached=setup.active)
    setup.store.snapshot(time.time_ns())
    splits = [s for s in ("train", "val", "test") if files.get(s)]
    sets = {s: dm.dataset(s) for s in splits}
    total = sum(len(d) for d in sets.values())
    out: dict[str, Any] = {"records": total, "splits": {}}
    estimated = False
    with torch.no_grad(), _numerics_context(setup.numerics.precision, device.type):
        bar = tqdm(total=total, desc="caching features", unit="conv", disable=not progress)
        for split, dataset in sets.items():
            bar.set_description(f"caching features ({split})")
            out["splits"][split] = len(dataset)
            loader = DataLoader(dataset, batch_size=int(cfg["data"].get("batch_size", 32)), shuffle=False,
                                num_workers=data_workers(cfg["data"].get("num_workers"), device.type), collate_fn=collate)
            for batch in loader:
                for name, cache in setup.caches.items():
                    if name not in batch["media"]:
                        continue
                    media = batch["media"][name]
                    n_items = len(media[CACHE_KEY]["keys"])
                    features, mask = cache.encode(model.encoders[name], modalities[name].collate, media, torch.float32)
                    if not estimated:
                        fresh = list(setup.store.pending.values())
                        per_item = (sum(f.numel() * f.element_size() + m.numel() for f, m in fresh) / len(fresh)) if fresh \
                            else _entry_bytes(features, mask, cache.dtype)
                        items = total * n_items / max(1, len(batch["input_ids"]))
                        msg = (f"feature cache: about {items:,.0f} {name} items x {per_item / 1024:.1f} KiB = "
                               f"{items * per_item / 2**20:,.1f} MiB ({per_item * 1000 / 2**20:.1f} MiB per 1k items) in {setup.store.root}")
                        (bar.write if progress else print)(msg)
                        out["estimate_bytes_per_item"] = per_item
                        estimated = True
                bar.update(len(batch["input_ids"]))
            setup.store.flush()
        bar.close()
    report = setup.store.report
    out.update(hits=report.hits, written=report.written, bytes_written=report.bytes_written, bad=report.bad)
    print(report.summary(), flush=True)
    return out


def _entry_bytes(features: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype | None) -> float:
    """Mean stored bytes of one entry of this batch (its real positions, in the stored dtype)."""
    size = (dtype or features.dtype).itemsize
    real = mask.sum(1).float().mean().item()
    return real * (features.shape[-1] * size + 1)


def copy_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """A deep plain copy of a run config."""
    return json.loads(json.dumps(cfg, default=str))
