"""omnimodal's molecule plugin: SMILES / MOL blocks -> RDKit graph -> GIN (GINEConv) -> projector.

This module is the plugin's entry point and stays light: it registers specs only (RDKit and
torch-geometric are imported by the implementation modules, when a molecule is used).
"""

from __future__ import annotations

from pathlib import Path

from omnimodal.hookspecs import hookimpl
from omnimodal.specs import DemoSpec, ModalitySpec, ProjectorSpec

OMNIMODAL_API_VERSION = 3


@hookimpl
def omnimodal_register_modalities(register):
    """Register the ``molecule`` modality."""
    register(
        ModalitySpec(
            name="molecule",
            part_type="molecule",
            placeholder="<molecule>",
            impl="omnimodal_molecule.modality:MoleculeModality",
            api_part_types=("molecule",),
            requires=("rdkit", "torch_geometric"),
            install_hint="pip install 'omnimodal[molecule]'",
            description="molecules (SMILES, MOL block, .mol/.sdf) -> RDKit graph -> GIN (GINEConv)",
            cli_flags=("molecule",),
            cli_help="SMILES, or a .mol/.sdf file",
        )
    )


@hookimpl
def omnimodal_register_projectors(register):
    """Register ``graph_pool``: one pseudo-token per molecule."""
    register(
        ProjectorSpec(
            "graph_pool",
            "omnimodal_molecule.projectors:GraphPoolProjector",
            "masked mean/sum/mean_max over atoms, then MLP: one token per item",
        )
    )


@hookimpl
def omnimodal_config_dirs():
    """The plugin's Hydra configs: ``modalities/molecule.yaml``, ``molecule/encoder/*``."""
    return [str(Path(__file__).parent / "conf")]


@hookimpl
def omnimodal_demo_data():
    """Molecule QA built from RDKit's bundled NCI set, answers computed by RDKit."""
    return [
        DemoSpec(
            "molecule",
            "omnimodal_molecule.demo:build",
            version="3",
            description="molecule QA on RDKit's NCI first_5K set (rings, elements, groups)",
        )
    ]
