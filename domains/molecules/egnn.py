"""E(n)-equivariant graph network (Satorras et al. 2021) in the configuration EDM uses for QM9.

Written from the published definitions (EDM, Hoogeboom et al. 2022, appendix; EGNN paper):

* node features h_i (invariant) and positions x_i; per block, ``sublayers`` invariant message
  passing layers (GCL) followed by one coordinate update;
* GCL: m_ij = phi_e(h_i, h_j, a_ij), gated by an attention scalar sigmoid(w . m_ij) when
  ``attention``; h_i <- h_i + phi_h(h_i, sum_j m_ij / normalization_factor);
* coordinate update: x_i <- x_i + sum_j (x_i - x_j) / (|x_i - x_j| + norm_constant)
  * tanh(phi_x(h_i, h_j, a_ij)) * coords_range  (``tanh``; without it the raw phi_x);
* edge attributes a_ij: squared distance at the current positions and at the input positions
  (or a sinusoidal embedding of both distances, ``distance_embedding`` > 0);
* the diffusion time t (and, when conditioning, the properties) are concatenated to the node
  features; eps for positions = (x_final - x_input) with its per-molecule mean removed, eps for
  features = a final linear map of the node features.

Batches are sparse graphs (no padding): per-molecule rows stacked with a sorted batch vector;
messages are aggregated with ``index_add``. Edges are all pairs within a molecule (``edges="full"``,
EDM) or pairs within ``cutoff`` (``edges="radius"``, for large molecules; the graph is built once
from the input positions; ``smooth_cutoff`` fades messages to zero at the cutoff so the network
stays continuous in the positions). Defaults reproduce EDM's QM9 network: 9 blocks, 256 hidden, SiLU,
attention, tanh coordinates with range 15, normalization factor 1: 5,336,073 parameters in the
blocks (5,339,663 in total with 6 atom features and no conditioning).

Cost: full mode needs O(sum_k n_k^2 * hidden) memory per layer; the first linear layer of every edge
MLP is evaluated per node and gathered per edge (identical to the linear map of the concatenation,
about 2x cheaper).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .graph import fully_connected_edges, radius_edges

EGNN_DEFAULTS: dict = {
    "hidden": 256,
    "layers": 9,
    "sublayers": 1,
    "attention": True,
    "tanh": True,
    "coords_range": 15.0,
    "norm_constant": 1.0,
    "normalization_factor": 1.0,
    "aggregation": "sum",  # "sum" (divided by normalization_factor) or "mean"
    "activation": "silu",
    "edges": "full",  # "full" or "radius"
    "cutoff": 5.0,  # radius mode only (same length unit as positions)
    "max_neighbours": 0,  # radius mode only: keep the nearest k per atom (0: all)
    "smooth_cutoff": False,  # radius mode only: weight messages by 0.5 (cos(pi d0 / cutoff) + 1)
    "distance_embedding": 0,  # 0: raw squared distances; n > 0: n sinusoidal frequencies
    "time_embedding": 0,  # 0: t concatenated as one feature (EDM); n > 0: n sinusoidal features
    "condition_time": True,
    "coord_init_gain": 0.001,  # xavier gain of the last coordinate layer (EDM's choice)
    "position_output": "delta",  # delta: F_pos = the net's displacement of x (EDM, eps/velocity); absolute: its output position (x0)
}

# Keys a config may carry for the caller's dispatch; ignored by the builders.
DISPATCH_KEYS = frozenset({"name", "network", "type", "arch", "architecture"})

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation '{name}'; known: {sorted(ACTIVATIONS)}") from None


def merge_config(defaults: Mapping, model_cfg: Mapping | None, what: str) -> dict:
    """Defaults overridden by ``model_cfg``; unknown keys (other than dispatch keys) raise."""
    cfg = dict(defaults)
    for k, v in (model_cfg or {}).items():
        if k in DISPATCH_KEYS:
            continue
        if k not in defaults:
            raise ValueError(f"unknown {what} option '{k}'; known: {sorted(defaults)}")
        cfg[k] = v
    return cfg


# ----------------------------------------------------------------------------- shared input helpers


def sinusoidal(values: Tensor, dim: int, max_period: float = 10000.0, min_period: float = 1e-3) -> Tensor:
    """(rows,) -> (rows, dim): sin and cos at geometrically spaced periods."""
    half = dim // 2
    k = torch.arange(half, dtype=values.dtype, device=values.device)
    periods = min_period * (max_period / min_period) ** (k / max(half - 1, 1))
    ang = values[:, None] * (2 * math.pi / periods)
    out = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
    if dim % 2:
        out = torch.cat([out, values[:, None]], dim=-1)
    return out


def per_example_time(t: Tensor | float, batch_size: int, dtype, device) -> Tensor:
    t = torch.as_tensor(t, dtype=dtype, device=device).reshape(-1)
    if t.numel() == 1 and batch_size != 1:
        t = t.expand(batch_size)
    if t.numel() != batch_size:
        raise ValueError(f"t must have one value per example ({batch_size}), got {t.numel()}")
    return t


def time_features(t: Tensor, dim: int) -> Tensor:
    """(B,) -> (B, 1) raw t (dim 0, EDM) or (B, dim) sinusoidal features of t."""
    if dim <= 0:
        return t[:, None]
    # t in [0, 1] (or log-sigma / 4 with EDM preconditioning): periods from 1e-3 to 10.
    return sinusoidal(t, dim, max_period=10.0, min_period=1e-3)


def condition_features(cond: Any, batch_size: int, num_properties: int, dtype, device) -> Tensor | None:
    """(B, num_properties + 1): properties (zeros where dropped) and a use-flag; None if unconditional.

    ``cond`` is None, a (B, P) tensor, or a dict with "properties" (B, P) and optionally
    "properties_mask" (B,) bool (True = use the condition); a single value of either is broadcast.
    Missing properties count as dropped; a dropped example sees zeros and flag 0.
    """
    if num_properties <= 0:
        return None
    props, mask = None, None
    if isinstance(cond, Tensor):
        props = cond
    elif isinstance(cond, Mapping):
        props = cond.get("properties")
        mask = cond.get("properties_mask")
    if props is None:
        return torch.zeros(batch_size, num_properties + 1, dtype=dtype, device=device)
    props = torch.as_tensor(props, dtype=dtype, device=device)
    if props.numel() == 1:  # one value for every example and property (e.g. a null condition)
        props = props.reshape(1, 1).expand(batch_size, num_properties)
    if props.dim() == 1 and num_properties == 1:
        props = props[:, None]
    if tuple(props.shape) != (batch_size, num_properties):
        raise ValueError(f"properties must have shape ({batch_size}, {num_properties}), got {tuple(props.shape)}")
    if mask is None:
        use = torch.ones(batch_size, 1, dtype=dtype, device=device)
    else:
        mask = torch.as_tensor(mask, device=device).reshape(-1)
        if mask.numel() == 1:
            mask = mask.expand(batch_size)
        if mask.numel() != batch_size:
            raise ValueError(f"properties_mask must have shape ({batch_size},), got {tuple(mask.shape)}")
        use = (mask != 0).to(dtype)[:, None]
    return torch.cat([props * use, use], dim=-1)


def node_inputs(h: Tensor | None, index: Tensor, t: Tensor, cond: Any, *, batch_size: int, num_properties: int,
                time_embedding: int, condition_time: bool, dtype, device) -> Tensor:
    """Per-atom invariant inputs: [h, time features, properties * use, use]."""
    parts = [] if h is None else [h.to(dtype)]
    if condition_time:
        tt = per_example_time(t, batch_size, dtype, device)
        parts.append(time_features(tt, time_embedding)[index])
    c = condition_features(cond, batch_size, num_properties, dtype, device)
    if c is not None:
        parts.append(c[index])
    if not parts:
        return torch.ones(index.shape[0], 1, dtype=dtype, device=device)
    return torch.cat(parts, dim=-1)


def time_input_dim(time_embedding: int, condition_time: bool) -> int:
    if not condition_time:
        return 0
    return 1 if time_embedding <= 0 else int(time_embedding)


def remove_mean(v: Tensor, index: Tensor, batch_size: int) -> Tensor:
    """Subtract each molecule's mean from its rows."""
    sums = torch.zeros(batch_size, v.shape[1], dtype=v.dtype, device=v.device).index_add(0, index, v)
    counts = torch.bincount(index, minlength=batch_size).clamp_min(1).to(v.dtype)
    return v - (sums / counts[:, None])[index]


def build_edges(pos: Tensor, index: Tensor, batch_size: int, mode: str, cutoff: float,
                max_neighbours: int | None) -> tuple[Tensor, Tensor]:
    if mode == "full":
        return fully_connected_edges(index, batch_size)
    if mode == "radius":
        return radius_edges(pos, index, cutoff, max_neighbours=max_neighbours or None, batch_size=batch_size)
    raise ValueError(f"unknown edges mode '{mode}'; known: 'full', 'radius'")


# ----------------------------------------------------------------------------- layers


class PairLinear(nn.Linear):
    """A linear map of [h_row, h_col, edge_attr] evaluated as W_a h (per node) gathered at row,
    plus W_b h gathered at col, plus W_c edge_attr: the same function, fewer FLOPs per edge."""

    def __init__(self, node_dim: int, edge_dim: int, out_dim: int):
        super().__init__(2 * node_dim + edge_dim, out_dim)
        self.node_dim = node_dim

    def pair(self, h: Tensor, row: Tensor, col: Tensor, edge_attr: Tensor) -> Tensor:
        n = self.node_dim
        w = self.weight
        both = h @ torch.cat([w[:, :n], w[:, n : 2 * n]], dim=0).t()  # (N, 2 out)
        a, b = both.split(self.out_features, dim=-1)
        return a.index_select(0, row) + b.index_select(0, col) + nn.functional.linear(edge_attr, w[:, 2 * n :], self.bias)


def aggregate(messages: Tensor, row: Tensor, num_nodes: int, aggregation: str, normalization_factor: float) -> Tensor:
    """Sum (/ normalization_factor) or mean of edge messages at their receiver ``row``; reduced
    precision messages (autocast) are accumulated in float32."""
    if messages.dtype in (torch.float16, torch.bfloat16):
        messages = messages.float()
    out = torch.zeros(num_nodes, messages.shape[1], dtype=messages.dtype, device=messages.device)
    out = out.index_add(0, row, messages)
    if aggregation == "sum":
        return out / normalization_factor
    if aggregation == "mean":
        deg = torch.bincount(row, minlength=num_nodes).clamp_min(1).to(messages.dtype)
        return out / deg[:, None]
    raise ValueError(f"unknown aggregation '{aggregation}'; known: 'sum', 'mean'")


class GCL(nn.Module):
    """Invariant message passing layer with optional attention gate and a residual node update."""

    def __init__(self, hidden: int, edge_dim: int, act: str, attention: bool, aggregation: str,
                 normalization_factor: float):
        super().__init__()
        self.edge_in = PairLinear(hidden, edge_dim, hidden)
        self.edge_out = nn.Linear(hidden, hidden)
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), activation(act), nn.Linear(hidden, hidden))
        self.att = nn.Linear(hidden, 1) if attention else None
        self.act = activation(act)
        self.aggregation = aggregation
        self.normalization_factor = normalization_factor

    def forward(self, h: Tensor, row: Tensor, col: Tensor, edge_attr: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        m = self.act(self.edge_out(self.act(self.edge_in.pair(h, row, col, edge_attr))))
        if self.att is not None:
            m = m * torch.sigmoid(self.att(m))
        if edge_weight is not None:
            m = m * edge_weight
        agg = aggregate(m, row, h.shape[0], self.aggregation, self.normalization_factor)
        return h + self.node_mlp(torch.cat([h, agg], dim=-1))


class CoordinateUpdate(nn.Module):
    """x_i += sum_j (x_i - x_j) / (|x_i - x_j| + c) * tanh(phi_x(h_i, h_j, a_ij)) * coords_range."""

    def __init__(self, hidden: int, edge_dim: int, act: str, tanh: bool, coords_range: float, aggregation: str,
                 normalization_factor: float, init_gain: float):
        super().__init__()
        self.inp = PairLinear(hidden, edge_dim, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(self.out.weight, gain=init_gain)
        self.act = activation(act)
        self.tanh = tanh
        self.coords_range = coords_range
        self.aggregation = aggregation
        self.normalization_factor = normalization_factor

    def forward(self, h: Tensor, pos: Tensor, row: Tensor, col: Tensor, edge_attr: Tensor, unit_diff: Tensor,
                edge_weight: Tensor | None = None) -> Tensor:
        phi = self.out(self.act(self.mid(self.act(self.inp.pair(h, row, col, edge_attr)))))
        if self.tanh:
            phi = torch.tanh(phi) * self.coords_range
        if edge_weight is not None:
            phi = phi * edge_weight
        shift = aggregate(unit_diff * phi, row, pos.shape[0], self.aggregation, self.normalization_factor)
        return pos + shift


class DistanceEmbedding(nn.Module):
    """Squared distance -> sin/cos of the distance at ``n`` frequencies (periods 15/2^k, EDM-like)."""

    def __init__(self, n: int, max_period: float = 15.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * (2.0 ** torch.arange(n)) / max_period, persistent=False)

    def forward(self, d2: Tensor) -> Tensor:
        d = torch.sqrt(d2 + 1e-8)
        ang = d * self.freqs.to(d.dtype)
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


def edge_geometry(pos: Tensor, row: Tensor, col: Tensor, norm_constant: float) -> tuple[Tensor, Tensor]:
    """Squared distances (E, 1) and (x_i - x_j) / (|x_i - x_j| + norm_constant) (E, 3)."""
    diff = pos.index_select(0, row) - pos.index_select(0, col)
    d2 = diff.pow(2).sum(-1, keepdim=True)
    return d2, diff / (torch.sqrt(d2 + 1e-8) + norm_constant)


class EquivariantBlock(nn.Module):
    def __init__(self, hidden: int, sublayers: int, edge_dim: int, cfg: Mapping):
        super().__init__()
        self.gcls = nn.ModuleList(
            GCL(hidden, edge_dim, cfg["activation"], cfg["attention"], cfg["aggregation"], cfg["normalization_factor"])
            for _ in range(sublayers)
        )
        self.coord = CoordinateUpdate(hidden, edge_dim, cfg["activation"], cfg["tanh"], cfg["coords_range"],
                                      cfg["aggregation"], cfg["normalization_factor"], cfg["coord_init_gain"])
        self.norm_constant = cfg["norm_constant"]

    def forward(self, h, pos, row, col, initial_attr, embed, edge_weight=None):
        d2, unit = edge_geometry(pos, row, col, self.norm_constant)
        attr = torch.cat([embed(d2), initial_attr], dim=-1)
        for gcl in self.gcls:
            h = gcl(h, row, col, attr, edge_weight)
        pos = self.coord(h, pos, row, col, attr, unit, edge_weight)
        return h, pos


class EGNN(nn.Module):
    """The bare network on a sparse graph: (h (N, in), pos (N, 3), row, col) -> (h (N, out), pos (N, 3))."""

    def __init__(self, in_features: int, out_features: int, extra_edge_distances: int = 0, **options):
        super().__init__()
        cfg = merge_config(EGNN_DEFAULTS, options, "EGNN")
        if cfg["aggregation"] not in ("sum", "mean"):
            raise ValueError(f"unknown aggregation '{cfg['aggregation']}'; known: 'sum', 'mean'")
        self.cfg = cfg
        hidden = int(cfg["hidden"])
        n_freq = int(cfg["distance_embedding"] or 0)
        self.embed_distance = DistanceEmbedding(n_freq) if n_freq > 0 else nn.Identity()
        per_distance = 2 * n_freq if n_freq > 0 else 1
        edge_dim = (2 + int(extra_edge_distances)) * per_distance  # current + input (+ given) distances
        self.embedding = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(
            EquivariantBlock(hidden, int(cfg["sublayers"]), edge_dim, cfg) for _ in range(int(cfg["layers"]))
        )
        self.embedding_out = nn.Linear(hidden, out_features) if out_features > 0 else None

    def forward(self, h: Tensor, pos: Tensor, row: Tensor, col: Tensor,
                cutoff: float | None = None, edge_d2: Sequence[Tensor] = ()) -> tuple[Tensor | None, Tensor]:
        """``cutoff``: weight every edge by 0.5 (cos(pi d / cutoff) + 1) of its input distance d (the
        graph must hold only pairs with d <= cutoff), so messages vanish continuously at the cutoff.
        ``edge_d2``: more squared distances per edge (invariant inputs, e.g. of an x0 estimate)."""
        d2, _ = edge_geometry(pos, row, col, self.cfg["norm_constant"])
        initial_attr = torch.cat([self.embed_distance(d) for d in (d2, *edge_d2)], dim=-1)
        weight = None
        if cutoff is not None:
            d = torch.sqrt(d2 + 1e-12).clamp(max=float(cutoff))
            weight = 0.5 * (torch.cos(torch.pi * d / float(cutoff)) + 1.0)
        h = self.embedding(h)
        for block in self.blocks:
            h, pos = block(h, pos, row, col, initial_attr, self.embed_distance, weight)
        out = self.embedding_out(h) if self.embedding_out is not None else None
        return out, pos


class EGNNDynamics(nn.Module):
    """The molecule network: ``forward(x: State, t (B,), cond) -> State(pos=eps_pos, h=eps_h)``.

    Inputs per atom: h (``num_features``), t (1 feature, or ``time_embedding`` sinusoidal ones),
    and when ``num_properties`` > 0 the molecule's properties (zeros when dropped) plus a use-flag.
    eps_pos is E(3)-equivariant with zero mean per molecule; eps_h is invariant.
    """

    def __init__(self, num_features: int, num_properties: int = 0, pos_field: str = "pos", h_field: str = "h",
                 self_conditioning: bool = False, **options):
        super().__init__()
        cfg = merge_config(EGNN_DEFAULTS, options, "EGNN")
        if cfg["position_output"] not in ("delta", "absolute"):
            raise ValueError(f"unknown position_output '{cfg['position_output']}'; known: 'delta', 'absolute'")
        self.cfg = cfg
        self.num_features = int(num_features)
        self.num_properties = int(num_properties)
        self.pos_field, self.h_field = pos_field, h_field
        self.self_conditioning = bool(self_conditioning)
        in_features = (self.num_features + time_input_dim(int(cfg["time_embedding"] or 0), cfg["condition_time"])
                       + (self.num_properties + 1 if self.num_properties > 0 else 0))
        if self.self_conditioning:  # the estimate's types and its distance to each atom
            in_features += self.num_features + 1
        in_features = max(in_features, 1)
        self.egnn = EGNN(in_features, self.num_features, extra_edge_distances=int(self.self_conditioning), **cfg)

    def self_condition_inputs(self, x, row: Tensor, col: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Invariant inputs from the x0 estimate (fields "sc:pos", "sc:h"): per atom its estimated
        type and log(1 + d^2) of the distance to its estimated position, per edge log(1 + d^2) of
        the estimated distance (the logarithm keeps an untrained model's wild estimates tame)."""
        pos, sc_pos = x[self.pos_field], x["sc:" + self.pos_field]
        nodes = [x["sc:" + self.h_field].to(pos.dtype), torch.log1p((sc_pos - pos).pow(2).sum(-1, keepdim=True))]
        d2 = (sc_pos.index_select(0, row) - sc_pos.index_select(0, col)).pow(2).sum(-1, keepdim=True)
        return nodes, [torch.log1p(d2)]

    def forward(self, x, t: Tensor, cond: Any = None):
        pos = x[self.pos_field]
        index = x.index[self.pos_field]
        B = x.batch_size
        h = x[self.h_field] if self.num_features > 0 else None
        feats = node_inputs(h, index, t, cond, batch_size=B, num_properties=self.num_properties,
                            time_embedding=int(self.cfg["time_embedding"] or 0),
                            condition_time=self.cfg["condition_time"], dtype=pos.dtype, device=pos.device)
        row, col = build_edges(pos, index, B, self.cfg["edges"], self.cfg["cutoff"], self.cfg["max_neighbours"])
        edge_d2: list[Tensor] = []
        if self.self_conditioning:
            nodes, edge_d2 = self.self_condition_inputs(x, row, col)
            feats = torch.cat([feats, *nodes], dim=-1)
        smooth = self.cfg["edges"] == "radius" and bool(self.cfg["smooth_cutoff"])
        h_out, pos_out = self.egnn(feats, pos, row, col, cutoff=float(self.cfg["cutoff"]) if smooth else None,
                                   edge_d2=edge_d2)
        out_pos = pos_out - pos if self.cfg["position_output"] == "delta" else pos_out
        fields = {self.pos_field: remove_mean(out_pos.to(pos.dtype), index, B)}
        if h_out is not None:
            fields[self.h_field] = h_out.to(x[self.h_field].dtype)
        return x.like(fields)


def build_egnn(model_cfg: Mapping | None, num_features: int, num_properties: int = 0,
               self_conditioning: bool = False) -> EGNNDynamics:
    """An :class:`EGNNDynamics` from a config dict (keys of ``EGNN_DEFAULTS``; EDM's QM9 network by
    default). Keys "name"/"network"/"type"/"arch"/"architecture" are ignored; others raise."""
    cfg = merge_config(EGNN_DEFAULTS, model_cfg, "EGNN")
    return EGNNDynamics(num_features, num_properties, self_conditioning=self_conditioning, **cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
