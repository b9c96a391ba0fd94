"""Export a saved OmniModel: ``omnimodal export --model DIR --format NAME --output OUT``.

Formats come from plugins through the ``omnimodal_export_formats`` hook (see
:class:`omnimodal.specs.ExportSpec`); the core contributes only ``omnimodal`` (a re-save with
LoRA adapters merged). The vision plugin contributes ``llava``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from omnimodal.errors import ConfigError


def merged_decoder(model) -> nn.Module:
    """The plain causal LM of ``model`` (LoRA adapters merged in when it carries them)."""
    plain = getattr(model, "_plain_decoder", None)
    if plain is not None and getattr(model, "has_lora", False):
        return plain("merge")
    return model.decoder


def export_omnimodal(model, out_dir: str | Path) -> Path:
    """Re-save ``model`` in omnimodal's own format (LoRA adapters merged)."""
    return model.save_pretrained(out_dir)


def resolve_model_dir(path: str | Path) -> Path:
    """A model dir, or the ``model/`` dir inside a run dir."""
    path = Path(path)
    if (path / "model" / "omnimodal.json").is_file():
        return path / "model"
    return path


def formats() -> dict[str, str]:
    """Registered export formats -> their one-line description (no heavy import)."""
    from omnimodal.plugins import get_registry

    return {name: spec.description for name, spec in sorted(get_registry().exports.items())}


def export(model_dir: str | Path, fmt: str, out_dir: str | Path) -> Path:
    """Load a saved OmniModel (or a run dir holding ``model/``) and export it as ``fmt``."""
    from omnimodal.model import OmniModel
    from omnimodal.plugins import get_registry
    from omnimodal.specs import import_object

    spec = get_registry().export(fmt)
    src = resolve_model_dir(model_dir)
    out = Path(out_dir)
    if out.resolve() == src.resolve():
        raise ConfigError(f"--output {out} is the model dir itself; choose another directory")
    exporter = import_object(spec.exporter)
    model = OmniModel.from_pretrained(src)
    return Path(exporter(model, out))
