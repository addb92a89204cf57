"""The molecules domain: E(3)-equivariant 3D molecule generation (EDM-class) on QM9 or a user's
molecules, with EDM-comparable evaluation.

State per batch (sparse, no padding; one batch vector for all atom fields):
  pos  (atoms, 3)    positions in Angstrom, zero centre of mass per molecule (ZeroMean space)
  h    (atoms, K+1)  one-hot element over the data's element set scaled by 1/4, and the atomic
                     number scaled by 1/10 (EDM's norm values [1, 4, 10])
cond: None, or {"properties": (B, P) normalised values, "properties_mask": (B,) bool}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...core import State, ZeroMean
from ...core.domain import Batch, Domain
from ...core.io import InputError
from .types import ATOMIC_NUMBER, Molecule, symbol

NORM_ONEHOT = 4.0
NORM_CHARGE = 10.0
WEIGHTS_DIR = Path(__file__).parent / "weights"


class MoleculesDomain(Domain):
    name = "molecules"
    description = "3D molecules with explicit hydrogens (EDM-style E(3)-equivariant diffusion; QM9, SDF, XYZ, SMILES)"
    file_suffix = ".sdf"

    def defaults(self) -> dict:
        return {
            "data": {"source": "qm9", "path": "", "elements": [], "max_atoms": 0, "skip_bad": False,
                     "properties": [], "valid_every": 10, "cache_dir": "", "seed": 0},
            "model": {"network": "egnn"},
            "process": {"name": "polynomial", "timesteps": 1000, "power": 2.0, "precision": 1e-5},
            "objective": {"prediction": "eps", "weighting": "uniform", "time_sampler": "discrete", "timesteps": 1000,
                          "condition_dropout": 0.0},
            "train": {"batch_size": 64, "lr": 1e-4, "ema_decay": 0.9999, "adaptive_clip": True, "steps": 100000, "bf16": False,
                      "ckpt_every": 1000, "log_every": 100},
            "sample": {"sampler": "ddpm", "steps": 50, "grid": "discrete", "batch_size": 100, "shard_size": 100,
                       "properties": {}},
        }

    # ------------------------------------------------------------------ data
    def load_dataset(self, data_cfg: dict, split: str) -> list[Molecule]:
        from .data import load_qm9, load_user_dataset

        elements = data_cfg.get("elements") or None
        max_atoms = int(data_cfg.get("max_atoms") or 0) or None
        if data_cfg.get("path"):
            mols, skipped = load_user_dataset(data_cfg["path"], elements=elements, max_atoms=max_atoms,
                                              skip_bad=bool(data_cfg.get("skip_bad")), seed=int(data_cfg.get("seed", 0)))
            every = int(data_cfg.get("valid_every", 10))
            if split == "train":
                chosen = [m for i, m in enumerate(mols) if every <= 1 or i % every != every - 1]
            else:
                chosen = [m for i, m in enumerate(mols) if every > 1 and i % every == every - 1]
            return chosen
        if data_cfg.get("source", "qm9") != "qm9":
            raise InputError(f"molecules: unknown data.source '{data_cfg.get('source')}' (use 'qm9' or set data.path)")
        mols = load_qm9(split, cache_dir=data_cfg.get("cache_dir") or None)
        if max_atoms:
            mols = [m for m in mols if m.num_atoms <= max_atoms]
        return mols

    def data_config(self, train_examples: Sequence[Molecule], cfg: dict) -> dict:
        if not train_examples:
            raise InputError("molecules: the training split is empty")
        data_cfg = cfg.get("data", {})
        zs = sorted({int(z) for m in train_examples for z in m.atomic_numbers})
        wanted = data_cfg.get("elements") or []
        if wanted:
            zs = sorted({ATOMIC_NUMBER[s] for s in wanted})
        sizes = np.bincount([m.num_atoms for m in train_examples])
        props = {}
        for name in data_cfg.get("properties", []):
            vals = np.array([m.properties.get(name, np.nan) for m in train_examples], dtype=np.float64)
            if np.isnan(vals).any():
                raise InputError(f"molecules: property '{name}' is missing for some training molecules")
            props[name] = {"mean": float(vals.mean()), "mad": float(np.abs(vals - vals.mean()).mean())}
        return {
            "source": "qm9" if not data_cfg.get("path") else str(data_cfg["path"]),
            "elements": [symbol(z) for z in zs],
            "atomic_numbers": zs,
            "norm_values": [1.0, NORM_ONEHOT, NORM_CHARGE],
            "size_counts": sizes.tolist(),
            "max_atoms": int(len(sizes) - 1),
            "properties": props,
        }

    def features(self, molecule: Molecule, data_config: dict) -> torch.Tensor:
        """h = [one-hot / 4, Z / 10] (float32, atoms x (K+1))."""
        zs = data_config["atomic_numbers"]
        lookup = {z: i for i, z in enumerate(zs)}
        try:
            cols = [lookup[int(z)] for z in molecule.atomic_numbers]
        except KeyError as e:
            raise InputError(f"molecule {molecule.name!r}: element Z={e.args[0]} is not in the model's element set "
                             f"{data_config['elements']}") from None
        onehot = torch.zeros(molecule.num_atoms, len(zs))
        onehot[torch.arange(molecule.num_atoms), torch.tensor(cols)] = 1.0
        z = torch.as_tensor(molecule.atomic_numbers, dtype=torch.float32).unsqueeze(1)
        return torch.cat([onehot / NORM_ONEHOT, z / NORM_CHARGE], dim=1)

    def collate(self, examples: Sequence[Molecule], data_config: dict) -> Batch:
        pos = torch.cat([torch.as_tensor(m.positions, dtype=torch.float32) for m in examples])
        h = torch.cat([self.features(m, data_config) for m in examples])
        idx = torch.repeat_interleave(torch.arange(len(examples)), torch.tensor([m.num_atoms for m in examples]))
        x0 = State({"pos": pos, "h": h}, len(examples), index={"pos": idx, "h": idx},
                   spaces={"pos": ZeroMean()}).project()
        props = data_config.get("properties") or {}
        if not props:
            return Batch(x0, None)
        vals = torch.tensor([[(m.properties[k] - v["mean"]) / v["mad"] for k, v in props.items()] for m in examples],
                            dtype=torch.float32)
        return Batch(x0, {"properties": vals, "properties_mask": torch.ones(len(examples), dtype=torch.bool)})

    # ------------------------------------------------------------------ model
    def build_network(self, model_cfg: dict, data_config: dict) -> torch.nn.Module:
        num_features = len(data_config["atomic_numbers"]) + 1
        num_props = len(data_config.get("properties") or {})
        kind = (model_cfg or {}).get("network", "egnn")
        if kind == "egnn":
            from .egnn import build_egnn

            return build_egnn(model_cfg, num_features, num_props)
        if kind == "e3nn":
            from .e3nn_net import build_e3nn

            return build_e3nn(model_cfg, num_features, num_props)
        raise InputError(f"molecules: unknown model.network '{kind}' (use 'egnn' or 'e3nn')")

    def null_condition(self, cfg: dict, data_config: dict) -> dict | None:
        if not data_config.get("properties"):
            return None
        return {"properties": 0.0, "properties_mask": False}

    # ------------------------------------------------------------------ generation
    def sample_sizes(self, seeds: Sequence[int], data_config: dict) -> list[int]:
        """Atom counts drawn from the training histogram p(N), each from its own seed."""
        counts = np.asarray(data_config["size_counts"], dtype=np.float64)
        p = counts / counts.sum()
        return [int(np.random.default_rng(int(s)).choice(len(p), p=p)) for s in seeds]

    def template(self, seeds: Sequence[int], cfg: dict, data_config: dict) -> Batch:
        sizes = self.sample_sizes(seeds, data_config)
        n = int(sum(sizes))
        k = len(data_config["atomic_numbers"]) + 1
        idx = torch.repeat_interleave(torch.arange(len(seeds)), torch.tensor(sizes))
        x0 = State({"pos": torch.zeros(n, 3), "h": torch.zeros(n, k)}, len(seeds), index={"pos": idx, "h": idx},
                   spaces={"pos": ZeroMean()})
        props = data_config.get("properties") or {}
        if not props:
            return Batch(x0, None)
        wanted = (cfg.get("sample") or {}).get("properties") or {}
        missing = [p for p in props if p not in wanted]
        if missing:
            raise InputError(f"molecules: this model is conditioned on {list(props)}; give sample.properties."
                             f"{missing[0]}=VALUE")
        vals = torch.tensor([[(float(wanted[k]) - v["mean"]) / v["mad"] for k, v in props.items()]] * len(seeds),
                            dtype=torch.float32)
        return Batch(x0, {"properties": vals, "properties_mask": torch.ones(len(seeds), dtype=torch.bool)})

    def decode(self, x0: State, cond: Any, data_config: dict) -> list[Molecule]:
        """Atom type = argmax of the one-hot part (EDM); positions as generated."""
        zs = np.asarray(data_config["atomic_numbers"])
        k = len(zs)
        pos = x0["pos"].detach().double().cpu().numpy()
        types = x0["h"][:, :k].detach().argmax(dim=1).cpu().numpy()
        idx = x0.index["pos"].cpu().numpy()
        return [Molecule(zs[types[idx == i]], pos[idx == i]) for i in range(x0.batch_size)]

    def write(self, objects: Sequence[Molecule], seeds: Sequence[int], folder: Path, data_config: dict) -> list[Path]:
        from .output import write_sdf

        paths = []
        for mol, seed in zip(objects, seeds):
            mol.name = f"seed-{int(seed)}"
            paths.append(write_sdf(Path(folder) / f"{int(seed):08d}.sdf", [mol], [{"seed": int(seed)}]))
        return paths

    # ------------------------------------------------------------------ evaluation
    def read(self, path: Path) -> list[Molecule]:
        """All molecules of an SDF or XYZ file (written by sciffusion or any other tool)."""
        from .data import load_sdf, load_xyz

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".sdf", ".sd", ".mol"):
            mols, _ = load_sdf(path)
        elif suffix == ".xyz":
            mols, _ = load_xyz(path)
        else:
            raise InputError(f"{path}: molecules are read from .sdf or .xyz files")
        return mols

    def metrics(self, objects: Sequence[Any], data_config: dict, reference: Sequence[Any] | None = None) -> dict:
        """EDM metrics (percent). Novelty against the QM9 training SMILES when the model was trained
        on QM9 (``data_config["source"] == "qm9"``; the SMILES set is built once, about a minute, then cached)."""
        from .metrics import evaluate_molecules, qm9_reference_smiles

        mols = [m for o in objects for m in (o if isinstance(o, list) else [o])]
        if not mols:
            raise InputError("no molecules to evaluate")
        train_smiles = qm9_reference_smiles() if data_config.get("source") == "qm9" else None
        out = evaluate_molecules(mols, reference=reference, train_smiles=train_smiles)
        return {k: v for k, v in out.items() if v is not None}

    # ------------------------------------------------------------------ shipped model
    def default_checkpoint(self) -> Path | None:
        path = WEIGHTS_DIR / "qm9"
        return path if (path / "checkpoint.json").is_file() else None
