"""Molecule encoder: a GIN with edge features (GINEConv), node-level output with a mask."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GINEConv, global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.utils import to_dense_batch

from omnimodal.errors import ConfigError
from omnimodal_molecule.featurize import ATOM_FEATURES, BOND_FEATURES


class CategoricalEmbedding(nn.Module):
    """Sum of one embedding table per integer feature column (OGB's AtomEncoder/BondEncoder)."""

    def __init__(self, vocab_sizes: list[int], dim: int):
        super().__init__()
        offsets = torch.tensor([0] + list(vocab_sizes[:-1])).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.embed = nn.Embedding(int(sum(vocab_sizes)), dim)
        nn.init.xavier_uniform_(self.embed.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x + self.offsets).sum(dim=-2)


class GINEEncoder(nn.Module):
    """GIN with edge features (Hu et al. 2020, as in MoleculeSTM/MolCA), per-node LayerNorm.

    ``forward(x, edge_index, edge_attr, batch, num_atoms)`` returns ``(features, mask)``:
    ``[N, max_atoms_in_batch, hidden_dim]`` node features (closed by a LayerNorm) and the
    boolean mask of real atoms. LayerNorm rather than BatchNorm: it behaves the same for a
    one-atom molecule alone in a batch, in train and eval mode. ``virtual_node`` adds a
    per-molecule node that sums all atoms each layer and feeds back to them, so node features
    can carry global facts (atom and ring counts) that plain message passing cannot see; it
    also mixes one global vector into every atom, which blurs atom identity (which elements
    and groups are present), so the CPU-sized demo encoder leaves it off and uses ``readout``.
    ``readout`` adds one molecule summary to every atom at the end: an MLP over the sum and max
    of the input atom embeddings (element and group counts and presence) and the sum, mean and
    max of the final atom features. The input atom embedding is LayerNorm'd, so atom identity
    is on the same scale as the convolution outputs that the residual stream adds to it.
    """

    def __init__(
        self,
        hidden_dim: int = 300,
        num_layers: int = 5,
        dropout: float = 0.1,
        virtual_node: bool = True,
        residual: bool = True,
        readout: bool = True,
    ):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"molecule encoder: num_layers must be >= 1, got {num_layers}")
        if hidden_dim < 1:
            raise ConfigError(f"molecule encoder: hidden_dim must be >= 1, got {hidden_dim}")
        self.out_dim = hidden_dim
        self.num_layers = num_layers
        self.residual = residual
        self.dropout = nn.Dropout(dropout)
        self.atom_embed = CategoricalEmbedding([v for _, v in ATOM_FEATURES], hidden_dim)
        self.atom_norm = nn.LayerNorm(hidden_dim)
        bond_vocab = [v for _, v in BOND_FEATURES]
        self.bond_embeds = nn.ModuleList(CategoricalEmbedding(bond_vocab, hidden_dim) for _ in range(num_layers))
        self.convs = nn.ModuleList(
            GINEConv(
                nn.Sequential(nn.Linear(hidden_dim, 2 * hidden_dim), nn.ReLU(), nn.Linear(2 * hidden_dim, hidden_dim)),
                train_eps=True,
            )
            for _ in range(num_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(num_layers))
        self.virtual_node = virtual_node
        if virtual_node:
            self.vn_mlps = nn.ModuleList(
                nn.Sequential(
                    nn.Linear(hidden_dim, 2 * hidden_dim),
                    nn.ReLU(),
                    nn.Linear(2 * hidden_dim, hidden_dim),
                    nn.LayerNorm(hidden_dim),
                )
                for _ in range(num_layers - 1)
            )
        self.readout = (
            nn.Sequential(
                nn.Linear(5 * hidden_dim, 2 * hidden_dim),
                nn.ReLU(),
                nn.Linear(2 * hidden_dim, hidden_dim),
                nn.LayerNorm(hidden_dim),
            )
            if readout
            else None
        )
        self.norm_out = nn.LayerNorm(hidden_dim)

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        edge_attr: torch.Tensor,
        batch: torch.Tensor,
        num_atoms: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_graphs = int(num_atoms.numel())
        h = h0 = self.atom_norm(self.atom_embed(x))
        vn = h.new_zeros(n_graphs, h.shape[-1])
        for i in range(self.num_layers):
            if self.virtual_node:
                h = h + vn[batch]
            out = self.norms[i](self.convs[i](h, edge_index, self.bond_embeds[i](edge_attr)))
            if i < self.num_layers - 1:
                out = torch.relu(out)
            out = self.dropout(out)
            h = h + out if self.residual else out
            if self.virtual_node and i < self.num_layers - 1:
                vn = vn + self.dropout(self.vn_mlps[i](global_add_pool(h, batch, size=n_graphs)))
        if self.readout is not None:
            pools = [
                global_add_pool(h0, batch, size=n_graphs),
                global_max_pool(h0, batch, size=n_graphs),
                global_add_pool(h, batch, size=n_graphs),
                global_mean_pool(h, batch, size=n_graphs),
                global_max_pool(h, batch, size=n_graphs),
            ]
            h = h + self.readout(torch.cat(pools, dim=-1))[batch]
        h = self.norm_out(h)
        max_atoms = int(num_atoms.max()) if n_graphs else 0
        return to_dense_batch(h, batch, batch_size=n_graphs, max_num_nodes=max_atoms)
