"""Is the installed torch stack usable? Checked by importing, before any model is built.

torchaudio declares no torch requirement, and transformers imports torchaudio whenever it is
installed, so a torch/torchaudio pair that cannot be imported together breaks *every* model
import with transformers' opaque "Could not import module 'LlamaForCausalLM'". This module
turns that into one clear error with both versions, the import error and the fix.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util

from omnimodal.errors import OmnimodalError

# Keep equal to the bounds in pyproject.toml (tests/test_compat.py checks it).
TORCH_SPEC = "torch>=2.14.1,<2.16"
TORCHAUDIO_SPEC = "torchaudio>=2.11.1,<2.12"
FIX_COMMAND = f'pip install --upgrade "{TORCH_SPEC}" "{TORCHAUDIO_SPEC}"'

_checked = False


class InstallError(OmnimodalError):
    """The installed dependencies cannot work together; the message says how to fix it."""


def require_extra(extra: str, modules: tuple[str, ...], what: str) -> None:
    """Raise :class:`InstallError` naming the extra to install when one of ``modules`` is not
    importable (found without importing it): ``what`` needs ``pip install 'omnimodal[extra]'``."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise InstallError(f"{what} needs the {extra!r} extra ({', '.join(missing)} not installed): pip install 'omnimodal[{extra}]'")


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None (no import needed)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_torch_stack(force: bool = False) -> None:
    """Import torch and (if installed) torchaudio; raise :class:`InstallError` if they fail.

    Runs once per process (``force`` re-runs it). A torchaudio that is not installed is fine:
    only the audio modality needs it.
    """
    global _checked
    if _checked and not force:
        return
    torch_version = installed_version("torch")
    audio_version = installed_version("torchaudio")
    try:
        importlib.import_module("torch")
    except Exception as exc:  # noqa: BLE001 - any import failure is the message
        raise InstallError(
            f"torch {torch_version or '(not installed)'} cannot be imported: "
            f"{type(exc).__name__}: {exc}\nFix: {FIX_COMMAND}"
        ) from exc
    if importlib.util.find_spec("torchaudio") is not None:
        try:
            importlib.import_module("torchaudio")
        except Exception as exc:  # noqa: BLE001
            raise InstallError(
                f"torch {torch_version} and torchaudio {audio_version} are installed but cannot be "
                f"imported together: {type(exc).__name__}: {exc}\n"
                "transformers imports torchaudio whenever it is installed, so no model can load "
                "(not even a vision-only one) until the pair matches.\n"
                f"Fix: {FIX_COMMAND}\n"
                "(or `pip uninstall torchaudio` if you do not use the audio modality)"
            ) from exc
    _checked = True
