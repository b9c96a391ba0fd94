"""RDKit side of the molecule plugin: parse SMILES / MOL blocks / files with clear errors.

RDKit reports *why* a molecule is rejected only through its log (on C++ stderr by default).
We route that log to Python's ``sys.stderr`` once (``rdBase.LogToPythonStderr``) and capture
it around each parse (under a lock; other threads' stderr output during a parse lands in the
capture and is logged at debug level), so the reason ends up in the :class:`~omnimodal.errors.MediaError`
raised, next to the item's ``source``. This module imports RDKit only (no torch).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import threading
from pathlib import Path

from rdkit import Chem, rdBase

from omnimodal.errors import MediaError

FILE_SUFFIXES = (".mol", ".sdf", ".sd")
logger = logging.getLogger("omnimodal.molecule")
_LOCK = threading.Lock()
_ROUTED = False
_STAMP = re.compile(r"^\[\d\d:\d\d:\d\d\]\s?")


class MolBlock(str):
    """A MOL block (V2000/V3000 connection table) given as text, as opposed to a SMILES string."""


@contextlib.contextmanager
def _rdkit_log():
    """Capture RDKit's log lines (errors and warnings) while the block runs; yields a list."""
    global _ROUTED
    lines: list[str] = []
    with _LOCK:
        if not _ROUTED:
            rdBase.LogToPythonStderr()
            _ROUTED = True
        buf = io.StringIO()
        try:
            with contextlib.redirect_stderr(buf):
                yield lines
        finally:
            text = buf.getvalue()
            lines.extend(_STAMP.sub("", ln).strip() for ln in text.splitlines() if ln.strip())
            if lines:
                logger.debug("RDKit: %s", " | ".join(lines))


def _reason(lines: list[str], fallback: str, text: str = "") -> str:
    """Condense RDKit's log lines into one reason (drops echoed input and caret diagrams)."""
    out: list[str] = []
    for ln in lines:
        ln = ln.replace("SMILES Parse Error: ", "").rstrip(":").strip()
        if not ln or set(ln) <= set("~^ ") or ln == text or ln.startswith("Failed parsing SMILES"):
            continue
        if ln not in out:
            out.append(ln)
    return "; ".join(out) if out else fallback


def _sanitize(mol: Chem.Mol, source: str, what: str) -> Chem.Mol:
    """Sanitise in place (valence, aromaticity, ...) or raise naming RDKit's reason."""
    with _rdkit_log():
        problems = Chem.DetectChemistryProblems(mol)
    if problems:
        reasons = "; ".join(dict.fromkeys(f"{p.GetType()}: {p.Message()}" for p in problems))
        raise MediaError(f"{source}: {what} is not a valid molecule (RDKit: {reasons})")
    with _rdkit_log():
        try:
            Chem.SanitizeMol(mol)
        except Exception as exc:  # noqa: BLE001 - RDKit raises several exception types
            raise MediaError(f"{source}: {what} cannot be sanitised (RDKit: {exc})") from exc
    return mol


def finish_mol(mol: Chem.Mol, source: str, what: str) -> Chem.Mol:
    """Sanitise, drop removable hydrogens (implicit H), assign stereo labels; check non-empty."""
    mol = _sanitize(mol, source, what)
    try:
        mol = Chem.RemoveHs(mol)
    except Exception as exc:  # noqa: BLE001
        raise MediaError(f"{source}: {what}: removing explicit hydrogens failed (RDKit: {exc})") from exc
    if mol.GetNumAtoms() == 0:
        raise MediaError(f"{source}: {what} has no atoms")
    # CIP labels (R/S, E/Z) do not depend on atom order, unlike RDKit's CW/CCW chiral tags.
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    return mol


def mol_from_smiles(smiles: str, source: str) -> Chem.Mol:
    """Parse and sanitise a SMILES string; raise MediaError with RDKit's reason on failure."""
    if not isinstance(smiles, str):
        raise MediaError(f"{source}: a SMILES must be a string, got {type(smiles).__name__}")
    text = smiles.strip()
    if not text:
        raise MediaError(f"{source}: empty SMILES string")
    shown = text if len(text) <= 80 else text[:77] + "..."
    with _rdkit_log() as lines:
        mol = Chem.MolFromSmiles(text, sanitize=False)
    if mol is None:
        raise MediaError(f"{source}: invalid SMILES {shown!r} (RDKit: {_reason(lines, 'syntax error', text)})")
    return finish_mol(mol, source, f"SMILES {shown!r}")


def mol_from_molblock(block: str, source: str) -> Chem.Mol:
    """Parse and sanitise a MOL block; raise MediaError with RDKit's reason on failure."""
    if not block.strip():
        raise MediaError(f"{source}: empty MOL block")
    with _rdkit_log() as lines:
        mol = Chem.MolFromMolBlock(block, sanitize=False, removeHs=False)
    if mol is None:
        raise MediaError(f"{source}: not a valid MOL block (RDKit: {_reason(lines, 'unreadable connection table')})")
    return finish_mol(mol, source, "MOL block")


def mol_from_file(path: Path, source: str) -> Chem.Mol:
    """Read one molecule from a ``.mol`` or single-record ``.sdf`` file."""
    path = Path(path)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise MediaError(
            f"{source}: molecule files must be {', '.join(FILE_SUFFIXES)} (got {path.name!r}); "
            "give SMILES inline as {'type': 'molecule', 'smiles': ...}"
        )
    if not path.is_file():
        raise MediaError(f"{source}: molecule file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise MediaError(f"{source}: cannot read molecule file {path} ({type(exc).__name__}: {exc})") from exc
    if not text.strip():
        raise MediaError(f"{source}: molecule file {path} is empty")
    # An SD file holds records separated by "$$$$"; an item is exactly one molecule.
    records = [r for r in re.split(r"^\$\$\$\$\s*$", text, flags=re.M) if r.strip()]
    if len(records) > 1:
        raise MediaError(f"{source}: {path} holds {len(records)} molecules; a molecule item takes exactly one")
    return mol_from_molblock(records[0], f"{source}: {path}")


def to_smiles(mol: Chem.Mol) -> str:
    """Canonical SMILES (used as a molecule's identity, e.g. for the demo split)."""
    return Chem.MolToSmiles(mol)
