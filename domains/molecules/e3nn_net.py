"""An O(3)-equivariant tensor-product network (NequIP-style message passing, built on e3nn.o3).

Node features are scalars (0e) and vectors (1o). Each interaction layer:

1. a linear self-map of the node features (o3.Linear);
2. for every edge j -> i, the tensor product of the source's features with the spherical harmonics
   Y(x_i - x_j) up to ``lmax``, one weight per path and channel ("uvu") produced by an MLP of a radial
   basis of |x_i - x_j|; only paths ending in 0e or 1o are kept;
3. sum over incoming edges divided by ``normalization_factor`` (or the mean);
4. a linear map to scalars, gates and vectors plus a linear self-connection of the layer's input,
   then a gated nonlinearity (SiLU on scalars, sigmoid gates on vectors); residual when shapes match.

The readout is a linear map to ``num_features`` scalars (eps for h, invariant) and one 1o vector
(eps for positions, equivariant, then the per-molecule mean is removed). Inputs and the
conditioning follow :class:`~sciffusion.domains.molecules.egnn.EGNNDynamics`: per atom
[h, t (or sinusoidal t), properties * use, use]. Only relative vectors enter, so outputs are
translation invariant. Edges: "full" (all pairs in a molecule) or "radius" (``cutoff``).
The forward pass always runs with autocast disabled (e3nn's tensor products do not support it).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from torch import Tensor, nn

from .egnn import (aggregate, build_edges, merge_config, node_inputs, remove_mean,
                   time_input_dim)

E3NN_DEFAULTS: dict = {
    "scalars": 64,  # 0e channels
    "vectors": 16,  # 1o channels
    "layers": 4,
    "lmax": 2,  # spherical harmonics of edge directions
    "num_basis": 16,  # radial basis functions
    "max_radius": 10.0,  # radial basis spans [0, max_radius] (positions' unit)
    "radial_basis": "gaussian",  # e3nn soft_one_hot_linspace basis
    "radial_cutoff": False,  # basis vanishes beyond max_radius (smooth with "smooth_finite")
    "radial_hidden": 64,
    "radial_layers": 2,
    "normalization_factor": 4.0,  # about sqrt(average neighbours) of fully connected QM9
    "aggregation": "sum",  # "sum" (divided by normalization_factor) or "mean"
    "activation": "silu",
    "edges": "full",
    "cutoff": 5.0,
    "max_neighbours": 0,  # radius mode only: keep the nearest k per atom (0: all)
    "time_embedding": 0,
    "condition_time": True,
}


_ACT_FNS = {"silu": torch.nn.functional.silu, "relu": torch.relu, "gelu": torch.nn.functional.gelu,
            "tanh": torch.tanh, "softplus": torch.nn.functional.softplus}


def _act_fn(name: str):
    try:
        return _ACT_FNS[name]
    except KeyError:
        raise ValueError(f"unknown activation '{name}'; known: {sorted(_ACT_FNS)}") from None


class Interaction(nn.Module):
    """One message passing layer: irreps_in -> "scalars x 0e + vectors x 1o"."""

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, scalars: int, vectors: int, num_basis: int,
                 radial_hidden: int, radial_layers: int, act: str, aggregation: str, normalization_factor: float):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(f"{scalars}x0e + {vectors}x1o")
        wanted = {o3.Irrep("0e"), o3.Irrep("1o")}
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            for j, (_, ir_edge) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_edge:
                    if ir_out in wanted:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        self.irreps_mid = o3.Irreps(mid)
        self.pre = o3.Linear(self.irreps_in, self.irreps_in)
        self.tp = o3.TensorProduct(self.irreps_in, irreps_sh, self.irreps_mid, instructions,
                                   shared_weights=False, internal_weights=False)
        fn = _act_fn(act)
        self.radial = FullyConnectedNet([num_basis] + [radial_hidden] * radial_layers + [self.tp.weight_numel], fn)
        self.gate = Gate(f"{scalars}x0e", [fn], f"{vectors}x0e", [torch.sigmoid], f"{vectors}x1o")
        self.post = o3.Linear(self.irreps_mid, self.gate.irreps_in)
        self.self_connection = o3.Linear(self.irreps_in, self.gate.irreps_in)
        self.residual = self.irreps_in == self.irreps_out
        self.aggregation = aggregation
        self.normalization_factor = normalization_factor

    def forward(self, f: Tensor, row: Tensor, col: Tensor, sh: Tensor, radial_emb: Tensor) -> Tensor:
        weights = self.radial(radial_emb)
        messages = self.tp(self.pre(f).index_select(0, col), sh, weights)
        agg = aggregate(messages, row, f.shape[0], self.aggregation, self.normalization_factor)
        out = self.gate(self.post(agg) + self.self_connection(f))
        return f + out if self.residual else out


class E3NNDynamics(nn.Module):
    """``forward(x: State, t (B,), cond) -> State(pos=eps_pos (1o), h=eps_h (0e))``."""

    def __init__(self, num_features: int, num_properties: int = 0, pos_field: str = "pos", h_field: str = "h",
                 **options):
        super().__init__()
        cfg = merge_config(E3NN_DEFAULTS, options, "e3nn network")
        if cfg["aggregation"] not in ("sum", "mean"):
            raise ValueError(f"unknown aggregation '{cfg['aggregation']}'; known: 'sum', 'mean'")
        self.cfg = cfg
        self.num_features = int(num_features)
        self.num_properties = int(num_properties)
        self.pos_field, self.h_field = pos_field, h_field
        S, V = int(cfg["scalars"]), int(cfg["vectors"])
        in_features = (self.num_features + time_input_dim(int(cfg["time_embedding"] or 0), cfg["condition_time"])
                       + (self.num_properties + 1 if self.num_properties > 0 else 0))
        self.embedding = nn.Linear(max(in_features, 1), S)
        self.irreps_sh = o3.Irreps.spherical_harmonics(int(cfg["lmax"]))
        layers, irreps = [], o3.Irreps(f"{S}x0e")
        for _ in range(int(cfg["layers"])):
            layer = Interaction(irreps, self.irreps_sh, S, V, int(cfg["num_basis"]), int(cfg["radial_hidden"]),
                                int(cfg["radial_layers"]), cfg["activation"], cfg["aggregation"],
                                float(cfg["normalization_factor"]))
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = nn.ModuleList(layers)
        out = f"{self.num_features}x0e + 1x1o" if self.num_features > 0 else "1x1o"
        self.readout = o3.Linear(irreps, o3.Irreps(out))

    def forward(self, x, t: Tensor, cond: Any = None):
        # e3nn's generated tensor-product code mixes dtypes under autocast: always run in full precision.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._forward(x, t, cond)

    def _forward(self, x, t: Tensor, cond: Any = None):
        cfg = self.cfg
        pos = x[self.pos_field]
        index = x.index[self.pos_field]
        B = x.batch_size
        h = x[self.h_field] if self.num_features > 0 else None
        feats = node_inputs(h, index, t, cond, batch_size=B, num_properties=self.num_properties,
                            time_embedding=int(cfg["time_embedding"] or 0), condition_time=cfg["condition_time"],
                            dtype=pos.dtype, device=pos.device)
        row, col = build_edges(pos, index, B, cfg["edges"], cfg["cutoff"], cfg["max_neighbours"])
        vec = pos.index_select(0, row) - pos.index_select(0, col)
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")
        dist = vec.pow(2).sum(-1).add(1e-12).sqrt()
        nb = int(cfg["num_basis"])
        radial = soft_one_hot_linspace(dist, 0.0, float(cfg["max_radius"]), nb, basis=cfg["radial_basis"],
                                       cutoff=bool(cfg["radial_cutoff"])) * nb**0.5
        f = self.embedding(feats)
        for layer in self.layers:
            f = layer(f, row, col, sh, radial)
        out = self.readout(f)
        F = self.num_features
        eps_pos = remove_mean(out[:, F : F + 3].to(pos.dtype), index, B)
        fields = {self.pos_field: eps_pos}
        if F > 0:
            fields[self.h_field] = out[:, :F].to(x[self.h_field].dtype)
        return x.like(fields)


def build_e3nn(model_cfg: Mapping | None, num_features: int, num_properties: int = 0) -> E3NNDynamics:
    """An :class:`E3NNDynamics` from a config dict (keys of ``E3NN_DEFAULTS``; dispatch keys
    "name"/"network"/"type"/"arch"/"architecture" are ignored, others raise)."""
    cfg = merge_config(E3NN_DEFAULTS, model_cfg, "e3nn network")
    return E3NNDynamics(num_features, num_properties, **cfg)
