"""Molecule -> graph: integer categorical atom and bond features in a torch-geometric ``Data``.

Every feature is a small integer index (the last index of each vocabulary means "other"), so
the encoder embeds each column with its own embedding table and sums them (OGB-style),
rather than feeding a wide one-hot vector. Columns, in order:

Atoms (``x``, long ``[num_atoms, len(ATOM_FEATURES)]``):
    atomic_num (0-118, 119 other), degree (0-6), formal_charge (-3..+3), hybridization
    (S, SP, SP2, SP3, SP3D, SP3D2), aromatic, total_h (0-4), chirality (none, R, S, chiral
    but unlabelled), in_ring, num_rings (rings the atom belongs to: 0-3, 4+), and one flag per
    ring size 3..8 (``IsInRingSize``). Chirality uses CIP labels, which, unlike RDKit's CW/CCW
    tags, do not depend on atom order, so renumbering atoms gives the same graph.

Bonds (``edge_attr``, long ``[2 * num_bonds, len(BOND_FEATURES)]``; each bond is stored as
two directed edges, as torch-geometric expects):
    bond_type (single, double, triple, aromatic), conjugated, in_ring, stereo (none, any, E, Z).

Hydrogens are implicit (counted by ``total_h``), as RDKit parses SMILES.
"""

from __future__ import annotations

import torch
from rdkit import Chem
from torch_geometric.data import Data

_HYB = (
    Chem.rdchem.HybridizationType.S,
    Chem.rdchem.HybridizationType.SP,
    Chem.rdchem.HybridizationType.SP2,
    Chem.rdchem.HybridizationType.SP3,
    Chem.rdchem.HybridizationType.SP3D,
    Chem.rdchem.HybridizationType.SP3D2,
)
_BOND = (Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE, Chem.BondType.AROMATIC)
RING_SIZES = (3, 4, 5, 6, 7, 8)

#: (name, vocabulary size) of each atom feature column; the last index is "other".
ATOM_FEATURES: tuple[tuple[str, int], ...] = (
    ("atomic_num", 120),
    ("degree", 8),
    ("formal_charge", 8),
    ("hybridization", len(_HYB) + 1),
    ("aromatic", 2),
    ("total_h", 6),
    ("chirality", 5),
    ("in_ring", 2),
    ("num_rings", 5),
) + tuple((f"ring_size_{k}", 2) for k in RING_SIZES)

#: (name, vocabulary size) of each bond feature column.
BOND_FEATURES: tuple[tuple[str, int], ...] = (
    ("bond_type", len(_BOND) + 1),
    ("conjugated", 2),
    ("in_ring", 2),
    ("stereo", 5),
)

_CHIRAL = {"R": 1, "S": 2}
_STEREO = {
    Chem.BondStereo.STEREONONE: 0,
    Chem.BondStereo.STEREOANY: 1,
    Chem.BondStereo.STEREOE: 2,
    Chem.BondStereo.STEREOTRANS: 2,
    Chem.BondStereo.STEREOZ: 3,
    Chem.BondStereo.STEREOCIS: 3,
}


def _index(value, choices, other: int) -> int:
    try:
        return choices.index(value)
    except ValueError:
        return other


def _clip(value: int, low: int, high: int, other: int) -> int:
    return value - low if low <= value <= high else other


def atom_features(atom: Chem.Atom) -> list[int]:
    """Integer feature indices of one atom, in ``ATOM_FEATURES`` order."""
    ring = atom.GetOwningMol().GetRingInfo()
    if atom.HasProp("_CIPCode"):
        chirality = _CHIRAL.get(atom.GetProp("_CIPCode").upper(), 4)
    else:
        chirality = 3 if atom.GetChiralTag() != Chem.ChiralType.CHI_UNSPECIFIED else 0
    return [
        _clip(atom.GetAtomicNum(), 0, 118, 119),
        _clip(atom.GetDegree(), 0, 6, 7),
        _clip(atom.GetFormalCharge(), -3, 3, 7),
        _index(atom.GetHybridization(), _HYB, len(_HYB)),
        int(atom.GetIsAromatic()),
        _clip(atom.GetTotalNumHs(), 0, 4, 5),
        chirality,
        int(atom.IsInRing()),
        min(ring.NumAtomRings(atom.GetIdx()), 4),
    ] + [int(atom.IsInRingSize(k)) for k in RING_SIZES]


def bond_features(bond: Chem.Bond) -> list[int]:
    """Integer feature indices of one bond, in ``BOND_FEATURES`` order."""
    return [
        _index(bond.GetBondType(), _BOND, len(_BOND)),
        int(bond.GetIsConjugated()),
        int(bond.IsInRing()),
        _STEREO.get(bond.GetStereo(), 4),
    ]


def mol_to_graph(mol: Chem.Mol) -> Data:
    """A sanitised RDKit molecule -> ``Data(x, edge_index, edge_attr)`` with long features."""
    x = torch.tensor([atom_features(a) for a in mol.GetAtoms()], dtype=torch.long)
    x = x.view(-1, len(ATOM_FEATURES))
    src: list[int] = []
    dst: list[int] = []
    attrs: list[list[int]] = []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        f = bond_features(bond)
        src += [i, j]
        dst += [j, i]
        attrs += [f, f]
    edge_index = torch.tensor([src, dst], dtype=torch.long).view(2, -1)
    edge_attr = torch.tensor(attrs, dtype=torch.long).view(-1, len(BOND_FEATURES))
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr, num_nodes=x.shape[0])


def truncate_graph(graph: Data, max_atoms: int) -> Data:
    """Keep the first ``max_atoms`` atoms (RDKit order) and the bonds between them."""
    keep = torch.arange(max_atoms)
    return graph.subgraph(keep)
