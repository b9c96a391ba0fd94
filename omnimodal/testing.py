"""The modality contract check: one import for a plugin's own tests.

In your plugin's test suite::

    from omnimodal.testing import check_modality

    def test_pointcloud_contract(tmp_path):
        check_modality("pointcloud", tmp_path)        # the config `modalities=[pointcloud]` gives

or, with no code at all, ``test_contract = modality_contract_test("pointcloud")``.
omnimodal's own suite runs the same check over every registered modality.

:func:`check_modality` builds the modality the way a run does (its Hydra config, or the
``cfg`` you pass), asks it for random valid items of several sizes
(:meth:`~omnimodal.modality.Modality.example_items`) and checks, naming the modality, the
item and the step on failure:

1. data side, as a data worker: ``prepare`` gives ``length == encoder_length(features)`` and
   ``num_tokens`` from the projector without creating any weight (no encoder is built);
   ``prepare`` and ``build_encoder`` leave the config as it was;
2. each item alone through encoder + projector: the encoder emits exactly ``length`` valid
   positions and the projector exactly ``num_tokens``, first in its row (the splice takes each
   item's first ``num_tokens`` pseudo-tokens); masks are boolean, shaped like the features,
   and all values at valid positions are finite;
3. all items in one padded, mixed-size batch give the same valid tokens as alone;
4. the pseudo-tokens splice into a decoder's placeholders with no mismatch, by the placeholder
   mask and by the collator's indices (the training path) alike;
5. ``save_pretrained`` -> ``from_pretrained``: the saved config is the modality's config as
   resolved, items prepare the same, and encoder + projector give the same outputs;
6. bad items (the modality's :meth:`~omnimodal.modality.Modality.bad_items`, an unsupported
   object, a missing file) raise :class:`~omnimodal.errors.DataError` naming the item.

Everything runs on the CPU with a tiny scratch decoder; nothing is downloaded (a modality
whose default config names a hub model needs a ``cfg`` pointing at a local directory).
"""

from __future__ import annotations

import copy
import random
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnimodal.errors import DataError, OmnimodalError, PluginError

TINY_DECODER: dict[str, Any] = {
    "kind": "scratch",
    "architecture": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tokenizer": {"kind": "bpe", "vocab_size": 300},
}
_TEXTS = ["what is this?", "describe it", "yes", "no", "one", "two", "three", "a small one", "a large one"]


class ContractError(AssertionError):
    """A modality breaks the plugin contract; the message names the modality, step and item."""


@dataclass
class ContractReport:
    """What :func:`check_modality` saw: per-item sources, lengths and token counts."""

    modality: str
    config: dict[str, Any]
    sources: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    raws: list[Any] = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        return (
            f"{self.modality}: {len(self.sources)} items, encoder lengths {self.lengths}, "
            f"pseudo-tokens {self.num_tokens}; passed: {', '.join(self.checks)}"
        )


def registered_modalities() -> list[str]:
    """Names of every available registered modality (built-in and third-party), sorted."""
    from omnimodal.plugins import get_registry

    return sorted(get_registry().modalities)


def default_config(name: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The config ``omnimodal train modalities=[name] *overrides`` gives ``modalities.<name>``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from omnimodal.builtin import core_config_dir

    with initialize_config_dir(config_dir=str(core_config_dir()), version_base=None):
        cfg = compose("config", overrides=[f"modalities=[{name}]", *overrides])
    out = OmegaConf.to_container(cfg.modalities, resolve=True)
    if not isinstance(out, dict) or name not in out:
        raise ContractError(f"{name}: Hydra config modalities/{name}.yaml gives no `modalities.{name}` (is it `# @package modalities.{name}`?)")
    return out[name]


def modality_contract_test(name: str, cfg: dict[str, Any] | None = None, **options: Any) -> Callable[..., ContractReport]:
    """A pytest test function running :func:`check_modality` (``test_contract = modality_contract_test("x")``)."""

    def test_modality_contract(tmp_path: Path) -> ContractReport:
        return check_modality(name, tmp_path, cfg, **options)

    test_modality_contract.__name__ = f"test_{name}_contract"
    return test_modality_contract


def check_modality(
    name: str,
    tmp_path: str | Path | None = None,
    cfg: dict[str, Any] | None = None,
    *,
    n_items: int = 5,
    seed: int = 0,
    atol: float = 1e-4,
) -> ContractReport:
    """Check modality ``name`` against the plugin contract (see the module docstring).

    ``cfg`` is its ``modalities.<name>`` config (default: its Hydra config); ``tmp_path`` a
    scratch directory for the save/load step (default: a temporary one). Raises
    :class:`ContractError` naming the failed step and item; returns a :class:`ContractReport`.
    """
    if tmp_path is None:
        with tempfile.TemporaryDirectory(prefix=f"omnimodal-contract-{name}-") as tmp:
            return check_modality(name, Path(tmp), cfg, n_items=n_items, seed=seed, atol=atol)
    import torch

    tmp_path = Path(tmp_path)
    cfg = copy.deepcopy(cfg) if cfg is not None else default_config(name)
    report = ContractReport(name, cfg)
    torch.manual_seed(seed)

    # 1. data side, as a data worker sees it: no encoder built, no weights created
    data_side = _new_modality(name, cfg)
    resolved = copy.deepcopy(data_side.cfg)
    with _count_parameters() as created:
        items = _prepare_examples(name, data_side, n_items, seed, report)
    _expect(not created, name, "data side", f"preparing items created {len(created)} weight tensor(s) (shapes {created[:3]}); data workers must count tokens without building an encoder")
    _expect(data_side.cfg == resolved, name, "prepare", f"preparing items changed the config ({_diff(resolved, data_side.cfg)})")
    raws = report.raws
    report.lengths = [it.length for it in items]
    report.num_tokens = [it.num_tokens for it in items]
    report.checks.append("token counts without an encoder")

    # 2. the model side, built as a run builds it
    from omnimodal.model import OmniModel

    try:
        model = OmniModel.from_config({"decoder": dict(TINY_DECODER), "modalities": {name: cfg}}, texts=_TEXTS).eval()
    except PluginError as exc:  # build_encoder changed the config (see build_encoder_checked)
        raise ContractError(f"{name}: contract step 'build_encoder' failed: {exc}") from exc
    modality = model.modalities[name]
    _expect(modality.cfg == resolved, name, "build_encoder", f"the config differs after building ({_diff(resolved, modality.cfg)})")
    report.checks.append("build_encoder leaves the config alone")
    d_model = model.decoder.config.hidden_size
    out_dim = getattr(model.encoders[name], "out_dim", None)
    _expect(isinstance(out_dim, int), name, "build_encoder", f"the encoder needs an int `out_dim`, has {out_dim!r}")

    alone = []
    with torch.no_grad():
        for item in items:
            again = modality.prepare(raws[report.sources.index(item.source)], item.source)
            _expect((again.length, again.num_tokens) == (item.length, item.num_tokens), name, "prepare", f"{item.source}: the model's own modality counts {again.length}/{again.num_tokens}, a data worker's {item.length}/{item.num_tokens}")
            alone.append(_encode(model, name, [item], out_dim, d_model, item.source))
    report.checks.append("declared == emitted, item by item")

    # 3. one padded batch of mixed sizes
    with torch.no_grad():
        batched = _encode(model, name, items, out_dim, d_model, "the mixed-size batch")
    for i, item in enumerate(items):
        for what, got, want in (("encoder features", batched[0][i][batched[1][i]], alone[i][0][0][alone[i][1][0]]), ("pseudo-tokens", batched[2][i][batched[3][i]], alone[i][2][0][alone[i][3][0]])):
            if not torch.allclose(got.float(), want.float(), atol=atol, rtol=atol):
                err = (got.float() - want.float()).abs().max().item()
                raise ContractError(f"{name}: {item.source} gives other {what} in a mixed-size batch (lengths {report.lengths}) than alone (max abs difference {err:.3g}); padding leaks into real positions")
    report.checks.append("mixed-size batch == alone")

    # 4. the splice: one placeholder per pseudo-token, no mismatch
    token_id = model.modality_token[name]
    input_ids = torch.full((1, sum(report.num_tokens) + 2), token_id)
    input_ids[0, 0] = input_ids[0, -1] = model.tokenizer.pad_token_id or 0
    batch = modality.collate([it.features for it in items])
    from omnimodal.data.dataset import splice_index

    with torch.no_grad():
        try:
            by_mask = model.embed(input_ids, {name: batch})
            by_index = model.embed(input_ids, {name: batch}, splice=splice_index(input_ids, {name: report.num_tokens}, {name: token_id}))
        except OmnimodalError as exc:
            raise ContractError(f"{name}: splicing {sum(report.num_tokens)} pseudo-tokens failed: {exc}") from exc
    _expect(torch.equal(by_mask, by_index), name, "splice", "the training splice (by the collator's indices) places other values than the placeholder-mask splice")
    report.checks.append("splice")

    # 5. save -> load: the same config, items and outputs
    import json

    saved_dir = model.save_pretrained(tmp_path / f"{name}-model")
    saved = json.loads((saved_dir / "omnimodal.json").read_text())["modalities"][name]["config"]
    _expect(saved == json.loads(json.dumps(resolved, default=str)), name, "save_pretrained", f"the saved config is not the resolved config ({_diff(resolved, saved)})")
    loaded = OmniModel.from_pretrained(saved_dir)
    reloaded = []
    for raw, item in zip(raws, items):
        again = loaded.modalities[name].prepare(raw, item.source)
        _expect((again.length, again.num_tokens) == (item.length, item.num_tokens), name, "from_pretrained", f"{item.source}: the loaded model counts {again.length}/{again.num_tokens}, the original {item.length}/{item.num_tokens}")
        _expect(_same(again.features, item.features), name, "from_pretrained", f"{item.source}: the loaded model preprocesses it differently")
        reloaded.append(again)
    with torch.no_grad():
        a = _encode(model, name, items, out_dim, d_model, "the batch")
        b = _encode(loaded, name, reloaded, out_dim, d_model, "the batch after loading")
    _expect(torch.allclose(a[2], b[2], atol=atol, rtol=atol), name, "from_pretrained", f"encoder + projector outputs differ after save -> load (max abs difference {(a[2] - b[2]).abs().max().item():.3g})")
    report.checks.append("save -> load")

    # 6. bad items are refused with an error naming them
    bad = [*data_side.bad_items(), (object(), ""), (tmp_path / "no-such-item.bin", "")]
    for k, (raw, words) in enumerate(bad):
        source = f"{name} bad item {k}"
        try:
            data_side.prepare(raw, source)
        except DataError as exc:
            _expect(source in str(exc), name, "bad items", f"the error for {raw!r:.60} does not name the item ({source!r}): {exc}")
            _expect(words.lower() in str(exc).lower(), name, "bad items", f"the error for {raw!r:.60} does not say {words!r}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - the contract asks for a DataError, say what came
            raise ContractError(f"{name}: bad item {raw!r:.60} raised {type(exc).__name__}: {exc} (expected a DataError/MediaError naming {source!r})") from exc
        raise ContractError(f"{name}: bad item {raw!r:.60} was accepted (expected a DataError naming {source!r})")
    report.checks.append("bad items named")
    return report


def _prepare_examples(name: str, modality, n_items: int, seed: int, report: ContractReport) -> list:
    """``example_items`` -> ``prepare`` each; token counts checked against ``encoder_length``."""
    raws = modality.example_items(random.Random(seed), n_items)
    _expect(len(raws) == n_items, name, "example_items", f"asked for {n_items} items, got {len(raws)}")
    report.raws = raws
    report.sources = [f"{name} example item {i}" for i in range(n_items)]
    items = []
    for raw, source in zip(raws, report.sources):
        try:
            item = modality.prepare(raw, source)
        except OmnimodalError as exc:
            raise ContractError(f"{name}: prepare refused its own example item ({source}): {exc}") from exc
        length = modality.encoder_length(item.features)
        _expect(item.length == length, name, "encoder_length", f"{source}: prepare gave length {item.length}, encoder_length gives {length}")
        _expect(item.num_tokens == modality.num_tokens(item.length) and item.num_tokens >= 1, name, "num_tokens", f"{source}: {item.num_tokens} pseudo-tokens for length {item.length}")
        items.append(item)
    return items


@contextmanager
def _count_parameters():
    """Record the shape of every ``torch.nn.Parameter`` created inside the block."""
    from torch.nn import Parameter

    created: list[tuple[int, ...]] = []
    original = Parameter.__new__

    def counting(cls, data=None, requires_grad=True):
        created.append(tuple(data.shape) if data is not None else ())
        return original(cls, data, requires_grad)

    Parameter.__new__ = counting
    try:
        yield created
    finally:
        Parameter.__new__ = original


def _new_modality(name: str, cfg: dict[str, Any]):
    from omnimodal.model import build_modalities

    return build_modalities({name: copy.deepcopy(cfg)})[name]


def _encode(model, name: str, items: list, out_dim: int, d_model: int, where: str):
    """encoder -> projector on ``items`` with every shape and mask check; returns the four tensors."""
    import torch

    batch = model.modalities[name].collate([it.features for it in items])
    features, mask = model.encoders[name](**batch)
    _expect(isinstance(mask, torch.Tensor) and mask.dtype == torch.bool, name, "encoder mask", f"{where}: the mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
    _expect(features.ndim == 3 and tuple(features.shape[:2]) == tuple(mask.shape) and features.shape[0] == len(items), name, "encoder output", f"{where}: features {tuple(features.shape)} and mask {tuple(mask.shape)} must be [N={len(items)}, L, d] and [N, L]")
    _expect(features.shape[-1] == out_dim, name, "encoder output", f"{where}: feature width {features.shape[-1]} != encoder.out_dim {out_dim}")
    lengths = [it.length for it in items]
    _expect(mask.sum(1).tolist() == lengths, name, "encoder length", f"{where}: the encoder emits {mask.sum(1).tolist()} valid positions, the data side declared {lengths} ({[it.source for it in items]})")
    _expect(bool(torch.isfinite(features[mask]).all()), name, "encoder output", f"{where}: non-finite features at valid positions")
    tokens, tmask = model.projectors[name](features, mask)
    _expect(tmask.dtype == torch.bool and tuple(tokens.shape[:2]) == tuple(tmask.shape) and tokens.shape[-1] == d_model, name, "projector output", f"{where}: tokens {tuple(tokens.shape)}, mask {tuple(tmask.shape)} {tmask.dtype}, decoder width {d_model}")
    declared = [it.num_tokens for it in items]
    _expect(tmask.sum(1).tolist() == declared, name, "token count", f"{where}: encoder + projector emit {tmask.sum(1).tolist()} pseudo-tokens, the data side declared {declared} ({[it.source for it in items]})")
    first = torch.arange(tmask.shape[1])[None, :] < torch.tensor(declared)[:, None]
    _expect(torch.equal(tmask.cpu(), first), name, "projector mask", f"{where}: valid pseudo-tokens must come first in each row (the splice takes an item's first num_tokens rows); the mask is {tmask.int().tolist()}")
    _expect(bool(torch.isfinite(tokens[tmask]).all()), name, "projector output", f"{where}: non-finite pseudo-tokens")
    return features, mask, tokens, tmask


def _expect(ok: bool, name: str, step: str, message: str) -> None:
    if not ok:
        raise ContractError(f"{name}: contract step '{step}' failed: {message}")


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "to_dict") and hasattr(b, "to_dict"):  # e.g. torch_geometric Data
        return _same(a.to_dict(), b.to_dict())
    return a == b


def _diff(a: Any, b: Any) -> str:
    from omnimodal.modality import _changed_keys

    keys = _changed_keys(a, b)
    return f"keys {', '.join(sorted(keys))}" if keys else "values differ"
