"""``python -m omnimodal.doctor``: what is installed, and does every plugin really import?

``omnimodal plugins`` stays light (it never imports torch); this check is the heavy one. It
prints the resolved versions of the stack, checks that torch and torchaudio import together,
then imports every registered modality's and projector's implementation and every demo
builder. It exits non-zero if anything fails, so CI cannot go green on a broken install. A
modality whose extra is not installed (``pip install -e .`` without ``[audio]``...) is listed
with its install line and does not fail the check, unless ``--strict`` or ``CI`` is set (CI
installs ``.[dev]``: every extra must be there).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback

from omnimodal.compat import InstallError, check_torch_stack, installed_version

STACK = (
    "torch", "torchaudio", "transformers", "tokenizers", "lightning", "hydra-core", "pluggy",
    "peft", "torch-geometric", "rdkit", "soundfile", "safetensors", "fastapi", "av",
)


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries omnimodal builds on (None: not installed)."""
    return {name: installed_version(name) for name in STACK}


def import_implementations() -> list[tuple[str, str, str | None]]:
    """Import each plugin's implementations; return ``(what, import path, error or None)``."""
    from omnimodal.plugins import get_registry
    from omnimodal.specs import import_object

    registry = get_registry()
    results: list[tuple[str, str, str | None]] = []
    for plugin in registry.plugins:
        if plugin.status in ("failed", "incompatible"):
            results.append((f"plugin {plugin.name}", plugin.value, plugin.reason.splitlines()[0]))
    for name, reason in registry.unavailable.items():
        results.append((f"modality {name}", "(unavailable)", reason))
    targets = [("decoder", "transformers:LlamaForCausalLM"), ("core", "omnimodal.model:OmniModel")]
    targets += [(f"modality {n}", s.impl) for n, s in registry.modalities.items()]
    targets += [(f"projector {n}", s.impl) for n, s in registry.projectors.items()]
    targets += [(f"demo {n}", s.builder) for n, s in registry.demos.items() if n not in registry.unavailable]
    # Every module of each modality's package (encoders, features...), not only the class.
    packages = sorted({s.impl.partition(":")[0].split(".")[0] for s in registry.modalities.values()})
    for package in packages:
        try:
            module = importlib.import_module(package)
        except Exception:  # noqa: BLE001 - reported below through import_object
            continue
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=f"{package}."):
            targets.append((f"module of {package}", info.name))
    for what, path in targets:
        try:
            import_object(path)
            results.append((what, path, None))
        except Exception as exc:  # noqa: BLE001 - report every failure, then exit non-zero
            results.append((what, path, f"{type(exc).__name__}: {exc}"))
    return results


def main(argv: list[str] | None = None) -> int:
    """Print versions and import results; return 1 if anything failed (with ``--strict`` or
    ``CI`` set, a modality whose extra is missing counts as failed too)."""
    args = sys.argv[1:] if argv is None else argv
    strict = "--strict" in args or os.environ.get("CI", "").lower() not in ("", "0", "false")
    print("installed:")
    for name, version in versions().items():
        print(f"  {name:16s} {version or '-'}")
    try:
        check_torch_stack()
    except InstallError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    failed = 0
    print("plugin implementations:")
    try:
        results = import_implementations()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1
    skipped = 0
    for what, path, error in results:
        optional = path == "(unavailable)" and not strict
        mark = "ok  " if error is None else "skip" if optional else "FAIL"
        print(f"  {mark} {what:28s} {path}" + (f"\n       {error}" if error else ""))
        failed += error is not None and not optional
        skipped += optional
    if skipped:
        print(f"{skipped} modality(ies) not installed (their extras above); --strict counts them as failures")
    if failed:
        print(f"{failed} implementation(s) failed to import", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
