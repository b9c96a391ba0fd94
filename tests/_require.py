"""Optional dependencies in tests: a skip outside CI, a failure under CI.

``pytest.importorskip`` would let a broken install pass as green (a dependency that ``.[dev]``
installs but that cannot be imported is then only a skip). Under CI (``CI=true``, set by
``.ci/run``) every such dependency must import; elsewhere the skip names the extra and the
command that installs it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def under_ci() -> bool:
    """True when the ``CI`` environment variable is set to a true value."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(module: str, extra: str, install: str | None = None) -> ModuleType:
    """Import ``module`` (from the ``extra`` extra, or installed by the ``install`` command that
    ``.ci/run`` runs) or skip, or fail under CI."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken install raises more than ImportError
        where = f".ci/run installs it: {install}" if install else (
            f"it comes with the '{extra}' extra: pip install -e \".[{extra}]\" (or \".[dev]\" for everything)"
        )
        msg = f"{module} cannot be imported ({type(exc).__name__}: {exc}); {where}"
        if under_ci():
            raise ImportError(f"CI=true and a .[dev] dependency is missing or broken: {msg}") from exc
        pytest.skip(msg, allow_module_level=True)
