"""``omnimodal new-plugin NAME``: write a ready modality plugin package from the templates here.

The package it writes installs as it is (``pip install -e omnimodal-NAME``), is listed by
``omnimodal plugins``, passes the :mod:`omnimodal.testing` contract (its own
``tests/test_contract.py``) and trains on its own demo data (``omnimodal train
modalities=[NAME]``). Templates live in ``template/``: ``*.tmpl`` files filled with
:class:`string.Template` (``${name}``, ``${package}``, ``${dist}``, ``${cls}``, ``${features}``);
``_package_`` and ``_name_`` in paths become the package and modality names.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from omnimodal.errors import ConfigError

TEMPLATE_DIR = Path(__file__).parent / "template"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def plugin_names(name: str) -> dict[str, str]:
    """The names the templates use for modality ``name``: package, distribution, class..."""
    if not NAME_RE.match(name) or keyword.iskeyword(name):
        raise ConfigError(
            f"plugin name {name!r}: use a lower-case identifier (letters, digits, '_', starting "
            "with a letter), e.g. 'ecg' or 'point_cloud'; it becomes the modality name and the "
            "package omnimodal_<name>"
        )
    return {
        "name": name,
        "package": f"omnimodal_{name}",
        "dist": f"omnimodal-{name.replace('_', '-')}",
        "cls": "".join(p.capitalize() for p in name.split("_")) + "Modality",
        "features": "4",
    }


def template_files() -> list[Path]:
    """Every template file (relative to :data:`TEMPLATE_DIR`), sorted."""
    return sorted(p.relative_to(TEMPLATE_DIR) for p in TEMPLATE_DIR.rglob("*.tmpl"))


def new_plugin(name: str, directory: str | Path | None = None, force: bool = False) -> Path:
    """Write the plugin package for modality ``name`` into ``directory`` (default
    ``./omnimodal-<name>``); return that directory. Refuses a non-empty directory unless ``force``."""
    names = plugin_names(name)
    target = Path(directory) if directory is not None else Path(names["dist"])
    if target.exists() and any(target.iterdir()) and not force:
        raise ConfigError(f"{target} exists and is not empty; choose another --dir or pass --force to overwrite its files")
    files = template_files()
    if not files:
        raise ConfigError(f"no plugin templates under {TEMPLATE_DIR} (a broken omnimodal install?)")
    for rel in files:
        out = target / str(rel.with_suffix("")).replace("_package_", names["package"]).replace("_name_", name)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(Template((TEMPLATE_DIR / rel).read_text()).substitute(names))
    return target


NEXT_STEPS = """wrote the {name!r} modality plugin to {target}
next:
  pip install -e {target}            # (add --no-deps to keep your current omnimodal)
  omnimodal plugins                  # lists {dist}
  pytest {target}/tests              # the omnimodal plugin contract
  omnimodal train modalities=[{name}] trainer.max_epochs=2   # trains on its demo data
then make it yours: {target}/{package}/modality.py (load, preprocess, collate), encoder.py
(the network) and demo.py; guide: docs/writing-a-plugin.md"""
