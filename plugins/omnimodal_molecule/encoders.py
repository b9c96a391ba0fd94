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


class ConcatEmbedding(nn.Module):
    def __init__(self, vocab_sizes, dim, col_dim=32):
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(v, col_dim) for v in vocab_sizes)
        self.proj = nn.Linear(col_dim * len(vocab_sizes), dim)

    def forward(self, x):
        return self.proj(torch.cat([e(x[:, i]) for i, e in enumerate(self.embeds)], -1))


class GINEEncoder(nn.Module):
    """GIN with edge features (Hu et al. 2020, as in MoleculeSTM/MolCA), per-node LayerNorm.

    ``forward(x, edge_index, edge_attr, batch, num_atoms)`` returns ``(features, mask)``:
    ``[N, max_atoms_in_batch, hidden_dim]`` node features (closed by a LayerNorm) and the
    boolean mask of real atoms. LayerNorm rather than BatchNorm: it behaves the same for a
    one-atom molecule alone in a batch, in train and eval mode. ``virtual_node`` adds a
    per-molecule node that sums all atoms each layer and feeds back to them, so node features
    can carry global facts (atom and ring counts) that plain message passing cannot see.
    """

    def __init__(
        self,
        hidden_dim: int = 300,
        num_layers: int = 5,
        dropout: float = 0.1,
        virtual_node: bool = True,
        residual: bool = True,
        atom_embedding: str = "sum",
        jk: str = "last",
        vn_pool: str = "sum",
        embed_norm: bool = False,
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
        self.atom_embedding = atom_embedding
        if atom_embedding == "sum":
            self.atom_embed = CategoricalEmbedding([v for _, v in ATOM_FEATURES], hidden_dim)
        else:
            self.atom_embed = ConcatEmbedding([v for _, v in ATOM_FEATURES], hidden_dim)
        self.jk = jk
        if jk == "cat":
            self.jk_proj = nn.Linear(hidden_dim * (num_layers + 1), hidden_dim)
        self.vn_pool = vn_pool
        self.embed_norm = nn.LayerNorm(hidden_dim) if embed_norm else nn.Identity()
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
                    nn.Linear(hidden_dim * (3 if vn_pool == "sum_mean_max" else 1), 2 * hidden_dim),
                    nn.ReLU(),
                    nn.Linear(2 * hidden_dim, hidden_dim),
                    nn.LayerNorm(hidden_dim),
                )
                for _ in range(num_layers - 1)
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
        h = self.embed_norm(self.atom_embed(x))
        vn = h.new_zeros(n_graphs, h.shape[-1])
        hs = [h]
        for i in range(self.num_layers):
            if self.virtual_node:
                h = h + vn[batch]
            out = self.norms[i](self.convs[i](h, edge_index, self.bond_embeds[i](edge_attr)))
            if i < self.num_layers - 1:
                out = torch.relu(out)
            out = self.dropout(out)
            h = h + out if self.residual else out
            hs.append(h)
            if self.virtual_node and i < self.num_layers - 1:
                pooled = global_add_pool(h, batch, size=n_graphs)
                if self.vn_pool == "sum_mean_max":
                    pooled = torch.cat([pooled, global_mean_pool(h, batch, size=n_graphs), global_max_pool(h, batch, size=n_graphs)], -1)
                vn = vn + self.dropout(self.vn_mlps[i](pooled))
        if self.jk == "cat":
            h = self.jk_proj(torch.cat(hs, -1))
        elif self.jk == "h0":
            h = hs[0]
        h = self.norm_out(h)
        max_atoms = int(num_atoms.max()) if n_graphs else 0
        return to_dense_batch(h, batch, batch_size=n_graphs, max_num_nodes=max_atoms)
