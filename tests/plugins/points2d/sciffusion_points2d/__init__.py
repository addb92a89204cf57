"""points2d: a third-party sciffusion domain of small 2D point clouds.

Each example is a set of 3-6 points: the vertices of a regular polygon (label 0) or evenly spaced
points on a segment (label 1), centred, randomly rotated, slightly jittered. Files are CSV, one
cloud per file (header ``x,y``; an optional first line ``# label=K``). The network is a small
E(2)-equivariant graph network, conditioned on the label (with a null label for guidance).

It uses only sciffusion's public API: nothing in sciffusion knows about it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from sciffusion.core import State, ZeroMean
from sciffusion.core.domain import Batch, Domain
from sciffusion.core.io import InputError, atomic_path

__all__ = ["PointsDomain", "make_cloud", "make_dataset", "EGNN2D"]
NUM_CLASSES = 2
SIZES = (3, 4, 5, 6)


def make_cloud(rng: np.random.Generator, label: int, n: int, jitter: float = 0.02) -> np.ndarray:
    """One centred cloud of n points: a regular polygon of radius 1 or a segment of half-length 1."""
    if label == 0:
        ang = np.arange(n) * 2 * math.pi / n
        pts = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    else:
        s = np.linspace(-1.0, 1.0, n)
        pts = np.stack([s, np.zeros(n)], axis=1)
    rot = rng.uniform(0, 2 * math.pi)
    R = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    pts = pts @ R.T + jitter * rng.standard_normal((n, 2))
    return pts - pts.mean(0, keepdims=True)


def write_cloud(path: Path, points: np.ndarray, label: int | None) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            if label is not None:
                f.write(f"# label={label}\n")
            f.write("x,y\n")
            for x, y in points:
                f.write(f"{x:.6f},{y:.6f}\n")


def make_dataset(folder: str | Path, n: int, seed: int = 0) -> Path:
    """Write n labelled clouds as CSV files into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = int(rng.integers(NUM_CLASSES))
        size = int(rng.choice(SIZES))
        write_cloud(folder / f"cloud_{i:05d}.csv", make_cloud(rng, label, size), label)
    return folder


def read_cloud(path: Path) -> dict:
    """Parse one CSV cloud; InputError names the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read as text ({e})") from None
    label = None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("# label="):
                try:
                    label = int(line.split("=", 1)[1])
                except ValueError:
                    raise InputError(f"{path}:{lineno}: bad label line '{line}'") from None
            continue
        if line.replace(" ", "") == "x,y":
            continue
        parts = line.split(",")
        if len(parts) != 2:
            raise InputError(f"{path}:{lineno}: expected 2 columns (x,y), got {len(parts)}")
        try:
            xy = [float(p) for p in parts]
        except ValueError:
            raise InputError(f"{path}:{lineno}: not a number in '{line}'") from None
        if not all(math.isfinite(v) for v in xy):
            raise InputError(f"{path}:{lineno}: NaN or infinite coordinate")
        rows.append(xy)
    if len(rows) < 2:
        raise InputError(f"{path}: a point cloud needs at least 2 points, found {len(rows)}")
    if label is not None and not 0 <= label < NUM_CLASSES:
        raise InputError(f"{path}: label {label} outside 0..{NUM_CLASSES - 1}")
    return {"points": np.asarray(rows, dtype=np.float64), "label": label}


def shape_error(points: np.ndarray) -> tuple[float, float]:
    """Distance from a regular polygon and from evenly spaced collinear points (relative RMS)."""
    p = points - points.mean(0)
    n = len(p)
    scale = float(np.sqrt((p**2).sum(1).mean())) + 1e-12
    r = np.sqrt((p**2).sum(1))
    ang = np.sort(np.arctan2(p[:, 1], p[:, 0]))
    gaps = np.diff(np.concatenate([ang, ang[:1] + 2 * math.pi]))
    polygon = float(np.sqrt(((r - r.mean()) ** 2).mean()) / scale + np.abs(gaps - 2 * math.pi / n).mean() / math.pi)
    _, s, vt = np.linalg.svd(p, full_matrices=False)
    proj = np.sort(p @ vt[0])
    spacing = np.diff(proj)
    line = float(s[-1] / (s[0] + 1e-12) + np.abs(spacing - spacing.mean()).mean() / (spacing.mean() + 1e-12))
    return polygon, line


# ----------------------------------------------------------------------------- network


def fully_connected_edges(index: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (i, j), i != j, of nodes in the same example (sorted batch vector)."""
    counts = torch.bincount(index, minlength=batch_size)
    starts = torch.cumsum(counts, 0) - counts
    per_node = counts[index]
    rows = torch.repeat_interleave(torch.arange(index.numel(), device=index.device), per_node)
    offset = torch.arange(rows.numel(), device=index.device) - torch.repeat_interleave(torch.cumsum(per_node, 0) - per_node, per_node)
    cols = starts[index[rows]] + offset
    keep = rows != cols
    return rows[keep], cols[keep]


class EGNN2D(nn.Module):
    """E(n)-equivariant graph network (Satorras et al. 2021) for 2D points, predicting eps."""

    def __init__(self, hidden: int = 64, layers: int = 3):
        super().__init__()
        self.label = nn.Embedding(NUM_CLASSES + 1, hidden)  # last index: no label
        self.inp = nn.Linear(hidden + 2, hidden)
        self.edge = nn.ModuleList(nn.Sequential(nn.Linear(2 * hidden + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()) for _ in range(layers))
        self.coord = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)) for _ in range(layers))
        self.node = nn.ModuleList(nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(layers))

    def forward(self, x: State, t: torch.Tensor, cond: Any = None) -> State:
        pos = x["pos"]
        idx = x.index["pos"]
        B = x.batch_size
        label = cond["label"] if cond is not None else torch.full((B,), NUM_CLASSES, dtype=torch.long, device=pos.device)
        counts = torch.bincount(idx, minlength=B).to(pos.dtype)
        node_t = t.to(pos.dtype)[idx].unsqueeze(1)
        h = self.inp(torch.cat([self.label(label)[idx], node_t, counts[idx].unsqueeze(1) / 6.0], dim=1))
        row, col = fully_connected_edges(idx, B)
        deg = (counts[idx] - 1).clamp_min(1).unsqueeze(1)
        p = pos
        for edge, coord, node in zip(self.edge, self.coord, self.node):
            diff = p[row] - p[col]
            d2 = (diff**2).sum(1, keepdim=True)
            m = edge(torch.cat([h[row], h[col], d2], dim=1))
            p = p + torch.zeros_like(p).index_add(0, row, diff / (d2.sqrt() + 1.0) * coord(m)) / deg
            h = h + node(torch.cat([h, torch.zeros_like(h).index_add(0, row, m)], dim=1))
        return x.like({"pos": p - pos})


# ----------------------------------------------------------------------------- the domain


class PointsDomain(Domain):
    name = "points2d"
    description = "2D point clouds (regular polygons and lines), a test vehicle for the engine"
    file_suffix = ".csv"

    def defaults(self) -> dict:
        return {
            "data": {"path": "", "valid_every": 10},
            "model": {"hidden": 64, "layers": 3},
            "process": {"name": "vp_cosine"},
            "objective": {"prediction": "v", "condition_dropout": 0.1},
            "train": {"batch_size": 64, "lr": 1e-3, "steps": 400, "ema_decay": 0.99, "ckpt_every": 100},
            "sample": {"sampler": "dpmpp_2m", "steps": 20, "batch_size": 64, "label": -1},
        }

    # data
    def load_dataset(self, data_cfg: dict, split: str) -> list[dict]:
        folder = Path(data_cfg.get("path", ""))
        if not str(data_cfg.get("path", "")):
            raise InputError("points2d: set data.path to a folder of CSV point clouds")
        if not folder.is_dir():
            raise InputError(f"{folder}: data folder not found")
        files = sorted(folder.glob("*.csv"))
        if not files:
            raise InputError(f"{folder}: no .csv point clouds in this folder")
        every = int(data_cfg.get("valid_every", 10))
        chosen = [f for i, f in enumerate(files) if (i % every == every - 1) == (split != "train")]
        out = []
        for f in chosen:
            c = read_cloud(f)
            if c["label"] is None:
                raise InputError(f"{f}: training clouds need a '# label=K' line")
            out.append(c)
        return out

    def data_config(self, train_examples: Sequence[dict], cfg: dict) -> dict:
        sizes = np.bincount([len(e["points"]) for e in train_examples], minlength=max(SIZES) + 1)
        labels = np.bincount([e["label"] for e in train_examples], minlength=NUM_CLASSES)
        return {"size_counts": sizes.tolist(), "label_counts": labels.tolist()}

    def collate(self, examples: Sequence[dict], data_config: dict) -> Batch:
        pos = torch.cat([torch.as_tensor(e["points"], dtype=torch.float32) for e in examples])
        idx = torch.repeat_interleave(torch.arange(len(examples)), torch.tensor([len(e["points"]) for e in examples]))
        labels = torch.tensor([e["label"] if e["label"] is not None else NUM_CLASSES for e in examples])
        x0 = State({"pos": pos}, len(examples), index={"pos": idx}, spaces={"pos": ZeroMean()}).project()
        return Batch(x0, {"label": labels})

    # model
    def build_network(self, model_cfg: dict, data_config: dict) -> nn.Module:
        return EGNN2D(hidden=int(model_cfg.get("hidden", 64)), layers=int(model_cfg.get("layers", 3)))

    def null_condition(self, cfg: dict, data_config: dict) -> dict:
        return {"label": NUM_CLASSES}

    # generation
    def template(self, seeds: Sequence[int], cfg: dict, data_config: dict) -> Batch:
        sizes = np.asarray(data_config["size_counts"], dtype=np.float64)
        labels = np.asarray(data_config["label_counts"], dtype=np.float64)
        want = int(cfg.get("sample", {}).get("label", -1))
        ns, ls = [], []
        for s in seeds:
            rng = np.random.default_rng(int(s))
            ns.append(int(rng.choice(len(sizes), p=sizes / sizes.sum())))
            ls.append(want if want >= 0 else int(rng.choice(len(labels), p=labels / labels.sum())))
        idx = torch.repeat_interleave(torch.arange(len(seeds)), torch.tensor(ns))
        x0 = State({"pos": torch.zeros(int(sum(ns)), 2)}, len(seeds), index={"pos": idx}, spaces={"pos": ZeroMean()})
        return Batch(x0, {"label": torch.tensor(ls)})

    def decode(self, x0: State, cond: Any, data_config: dict) -> list[dict]:
        pos = x0["pos"].detach().double().cpu().numpy()
        idx = x0.index["pos"].cpu().numpy()
        labels = cond["label"].tolist() if cond is not None else [None] * x0.batch_size
        return [{"points": pos[idx == i], "label": labels[i]} for i in range(x0.batch_size)]

    def write(self, objects: Sequence[dict], seeds: Sequence[int], folder: Path, data_config: dict) -> list[Path]:
        paths = []
        for obj, seed in zip(objects, seeds):
            path = Path(folder) / f"{int(seed):08d}.csv"
            write_cloud(path, obj["points"], obj["label"])
            paths.append(path)
        return paths

    # evaluation
    def read(self, path: Path) -> dict:
        return read_cloud(path)

    def metrics(self, objects: Sequence[dict], data_config: dict, reference: Sequence[dict] | None = None) -> dict:
        if not objects:
            raise InputError("no point clouds to evaluate")
        errs = np.array([shape_error(o["points"]) for o in objects])
        best = errs.min(1)
        kind = errs.argmin(1)
        out = {"n": float(len(objects)), "valid": float((best < 0.15).mean()), "shape_error": float(np.median(best)),
               "polygon_fraction": float((kind == 0).mean())}
        labelled = [(o["label"], k) for o, k, b in zip(objects, kind, best) if o.get("label") is not None]
        if labelled:
            out["label_accuracy"] = float(np.mean([lab == k for lab, k in labelled]))
        return out
