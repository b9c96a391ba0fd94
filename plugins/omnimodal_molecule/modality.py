"""Molecule modality: SMILES / MOL block / .mol-.sdf file -> RDKit -> graph -> GINE encoder.

Data-file parts: ``{"type": "molecule", "smiles": "c1ccccc1O"}``,
``{"type": "molecule", "molblock": "...M  END"}`` or ``{"type": "molecule", "path": "x.sdf"}``
(relative to the data file). In Python, a ``str`` is a SMILES (or a MOL block if it holds
``M  END``), a ``pathlib.Path`` a file, and an ``rdkit.Chem.Mol`` is taken as is.

Config keys (``modalities.molecule``, see ``conf/modalities/molecule.yaml``):
    max_atoms: the most heavy atoms an item may have (linear/mlp projectors give one token per
        atom, so this also caps the pseudo-token count).
    on_too_many_atoms: ``error`` (default: a MediaError naming the item) or ``truncate``:
        keep the first ``max_atoms`` atoms in RDKit order and the bonds between them; each
        truncation is counted (``molecules_truncated``) and logged as a warning.
    encoder: ``{kind: gine, hidden_dim, num_layers, dropout, virtual_node, residual}``.
    projector: any registered kind; ``resampler`` (K tokens) by default, ``graph_pool`` gives one.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from omnimodal.errors import ConfigError, DataError, MediaError
from omnimodal.modality import Modality

logger = logging.getLogger("omnimodal.molecule")

ENCODER_KINDS = ("gine",)
POLICIES = ("error", "truncate")
DEFAULT_MAX_ATOMS = 128


class MoleculeModality(Modality):
    """Molecules as graphs for a GIN encoder; config keys: see the module docstring."""

    def __init__(self, spec, cfg):
        super().__init__(spec, cfg)
        enc = self.cfg.setdefault("encoder", {"kind": "gine"})
        if enc.get("kind", "gine") not in ENCODER_KINDS:
            raise ConfigError(
                f"molecule encoder kind {enc.get('kind')!r} is unknown. Valid choices: {', '.join(ENCODER_KINDS)}."
            )
        policy = self.cfg.setdefault("on_too_many_atoms", "error")
        if policy not in POLICIES:
            raise ConfigError(f"molecule.on_too_many_atoms must be 'error' or 'truncate', got {policy!r}")
        max_atoms = self.cfg.setdefault("max_atoms", DEFAULT_MAX_ATOMS)
        if not isinstance(max_atoms, int) or isinstance(max_atoms, bool) or max_atoms < 1:
            raise ConfigError(f"molecule.max_atoms must be a positive integer, got {max_atoms!r}")

    # ---- data side -------------------------------------------------------------------
    def item_from_part(self, part: dict[str, Any], base_dir: Path | None) -> Any:
        """``smiles`` -> str, ``molblock`` -> MolBlock, ``path`` -> Path relative to the data file."""
        from omnimodal_molecule.chem import MolBlock

        given = [k for k in ("smiles", "molblock", "path") if k in part]
        if len(given) != 1:
            raise DataError(
                f"a 'molecule' part needs exactly one of 'smiles', 'molblock' or 'path' (got keys {sorted(part)})"
            )
        key = given[0]
        if key == "path":
            return super().item_from_part(part, base_dir)
        value = part[key]
        if not isinstance(value, str):
            raise DataError(f"a 'molecule' part's {key!r} must be a string, got {type(value).__name__}")
        return MolBlock(value) if key == "molblock" else value

    def cli_part(self, value: str) -> dict[str, Any]:
        """``--molecule CCO`` is a SMILES; ``--molecule x.sdf`` (an existing .mol/.sdf file) a path."""
        if value.lower().endswith((".mol", ".sdf")) and Path(value).is_file():
            return {"type": self.part_type, "path": value}
        return {"type": self.part_type, "smiles": value}

    def item_from_api_part(self, part: dict[str, Any]) -> Any:
        """``{"type": "molecule", "smiles": ...}`` (or ``molblock``) -> raw item; no file paths."""
        if part.get("type") != "molecule":
            return super().item_from_api_part(part)
        if "path" in part:
            raise DataError("an API 'molecule' part takes 'smiles' or 'molblock', not a server-side 'path'")
        return self.item_from_part(part, None)

    def load(self, raw: Any, source: str):
        """Return a sanitised RDKit molecule (implicit hydrogens) or raise MediaError naming ``source``."""
        from rdkit import Chem

        from omnimodal_molecule import chem

        if isinstance(raw, Chem.Mol):
            return chem.finish_mol(Chem.Mol(raw), source, "molecule")
        if isinstance(raw, Path):
            return chem.mol_from_file(raw, source)
        if isinstance(raw, chem.MolBlock) or (isinstance(raw, str) and "M  END" in raw):
            return chem.mol_from_molblock(raw, source)
        if isinstance(raw, str):
            # A string is SMILES, never a file name: a file is read only when given as a Path
            # (data files' `path` parts), so an API client cannot make the server read files.
            return chem.mol_from_smiles(raw, source)
        raise MediaError(
            f"{source}: cannot load a molecule from {type(raw).__name__} "
            "(give a SMILES string, a MOL block, a .mol/.sdf path or an rdkit Mol)"
        )

    def preprocess(self, loaded, source: str) -> dict[str, Any]:
        """RDKit molecule -> ``{"graph": Data}``, applying the ``max_atoms`` policy."""
        from omnimodal_molecule.featurize import mol_to_graph, truncate_graph

        n = loaded.GetNumAtoms()
        limit = int(self.cfg["max_atoms"])
        graph = mol_to_graph(loaded)
        if n > limit:
            if self.cfg["on_too_many_atoms"] != "truncate":
                raise MediaError(
                    f"{source}: molecule has {n} heavy atoms, more than max_atoms={limit} "
                    "(raise modalities.molecule.max_atoms, or set on_too_many_atoms=truncate)"
                )
            graph = truncate_graph(graph, limit)
            self.count("molecules_truncated")
            logger.warning("%s: molecule truncated from %d to max_atoms=%d atoms", source, n, limit)
        return {"graph": graph}

    def encoder_length(self, features: dict[str, Any]) -> int:
        """The number of atoms (node-level features, one per atom)."""
        return int(features["graph"].num_nodes)

    def estimate_tokens(self, raw: Any) -> int | None:
        """A SMILES string: its atoms as parsed without sanitising (up to ``max_atoms``). MOL
        blocks, files and unparsable strings: ``None``."""
        from omnimodal_molecule.chem import MolBlock

        if not isinstance(raw, str) or isinstance(raw, MolBlock) or "M  END" in raw:
            return None
        from rdkit import Chem

        from omnimodal_molecule.chem import _rdkit_log

        with _rdkit_log():  # RDKit's complaint is captured: an unparsable string is reported when loaded
            mol = Chem.MolFromSmiles(raw.strip(), sanitize=False)
        if mol is None:
            return None
        return self.num_tokens(min(mol.GetNumAtoms(), int(self.cfg["max_atoms"])))

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """``Batch.from_data_list`` -> plain tensors ``x, edge_index, edge_attr, batch, num_atoms``."""
        import torch
        from torch_geometric.data import Batch

        graphs = [it["graph"] for it in items]
        batch = Batch.from_data_list(graphs)
        return {
            "x": batch.x,
            "edge_index": batch.edge_index,
            "edge_attr": batch.edge_attr,
            "batch": batch.batch,
            "num_atoms": torch.tensor([g.num_nodes for g in graphs], dtype=torch.long),
        }

    # ---- model side ------------------------------------------------------------------
    def build_encoder(self, load_weights: bool = True):
        """A GINE encoder built from ``encoder`` config (no pretrained weights to load)."""
        from omnimodal_molecule.encoders import GINEEncoder

        enc = dict(self.cfg["encoder"])
        enc.pop("kind", None)
        try:
            return GINEEncoder(**enc)
        except TypeError as exc:
            raise ConfigError(f"molecule encoder: bad option ({exc})") from exc

    # ---- contract examples -----------------------------------------------------------
    def example_items(self, rng: random.Random, n: int) -> list[Any]:
        """Molecules from 1 to ~30 heavy atoms (SMILES strings and one MOL block)."""
        from omnimodal_molecule.chem import MolBlock

        pool = [
            "C", "CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
            "OC(=O)CCCCCCCCCCCCCCC", "Clc1ccc(cc1)C(c1ccc(Cl)cc1)C(Cl)(Cl)Cl", "N#N", "O=C=O",
            "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "C1CCC2(CC1)CCCCC2", "CCN(CC)CCOC(=O)c1ccc(N)cc1",
        ]
        picks = [rng.choice(pool) for _ in range(n)]
        if picks:
            from rdkit import Chem

            picks[0] = MolBlock(Chem.MolToMolBlock(Chem.MolFromSmiles(picks[0])))
        return picks

    def bad_items(self) -> list[tuple[Any, str]]:
        return [("C1CC", "SMILES"), ("not a molecule", "SMILES"), (12345, "cannot load a molecule")]
