"""The molecules domain: E(3)-equivariant 3D molecule generation (EDM-class) on QM9 or a user's
molecules, with EDM-comparable evaluation.

State per batch (sparse, no padding; one batch vector for all atom fields):
  pos  (atoms, 3)    positions in Angstrom, zero centre of mass per molecule (ZeroMean space)
  h    (atoms, K+1)  one-hot element over the data's element set scaled by 1/4, and the atomic
                     number scaled by 1/10 (EDM's norm values [1, 4, 10])
cond: None, or {"properties": (B, P) values normalised by the training mean and mean absolute
      deviation, "properties_mask": (B,) bool}; generation templates add "properties_value" (B, P),
      the requested values in their own units (written as SD tags; the network ignores it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from ...core import State, ZeroMean
from ...core.spaces import Categorical
from ...core.config import Annotated, Check, Table, one_of, specs_of_defaults
from ...core.domain import Batch, Domain
from ...core.io import InputError
from ...core.sampling import SampleConfig
from .types import ATOMIC_NUMBER, Molecule, symbol

NETWORKS = ("egnn", "e3nn")
ATOM_TYPES = ("onehot", "categorical")


def _network_defaults(name: str) -> dict | None:
    if name == "egnn":
        from .egnn import EGNN_DEFAULTS

        return EGNN_DEFAULTS
    if name == "e3nn":
        from .e3nn_net import E3NN_DEFAULTS

        return E3NN_DEFAULTS
    return None


@dataclass(frozen=True)
class MoleculesModel(Table):
    """``[model]``: ``network`` picks the network; its options (``EGNN_DEFAULTS``, ``E3NN_DEFAULTS``,
    one comment each there) are the table's other keys."""

    selector: ClassVar[str] = "network"
    network: Annotated[str, one_of(NETWORKS)] = "egnn"  # egnn (EDM's) or e3nn (tensor products, lmax >= 1)

    @classmethod
    def choice_fields(cls, value):
        defaults = _network_defaults(value)
        return None if defaults is None else specs_of_defaults(defaults)


@dataclass(frozen=True)
class MoleculesData(Table):
    """``[data]``: QM9 from qm9pack, or the user's molecules."""

    source: Annotated[str, one_of(("qm9",))] = "qm9"  # built-in data when no path is given
    path: str = ""  # an SDF, XYZ, SMILES file or a folder of them (instead of QM9)
    elements: list[str] = field(default_factory=list)  # the element set (default: the training data's)
    max_atoms: Annotated[int, Check(lo=0)] = 0  # drop molecules with more atoms (0: keep all)
    skip_bad: bool = False  # skip unreadable records (counted) instead of failing
    properties: list[str] = field(default_factory=list)  # properties to condition on (QM9's or SD tags)
    valid_every: Annotated[int, Check(lo=0)] = 10  # user data: every n-th molecule is validation (0/1: none)
    cache_dir: str = ""  # where the QM9 conversion is cached (default: the user cache)
    seed: Annotated[int, Check(lo=0)] = 0  # user data: the order of SMILES conformer generation
    atom_types: Annotated[str, one_of(ATOM_TYPES)] = "onehot"  # onehot: EDM's continuous one-hot; categorical: masked
    type_power: Annotated[float, Check(lo=0, lo_open=True)] = 1.0  # categorical: masked fraction t^power
    align: Annotated[str, one_of(("none", "ot"))] = "none"  # training noise: as drawn, or rotated and permuted within elements to the molecule (align.py)


@dataclass(frozen=True)
class MoleculesSample(SampleConfig):
    """``[sample]`` plus the molecules' own key."""

    properties: dict = field(default_factory=dict)  # conditional models: {property: value} to generate for
    grid_picture: bool = True  # write grid.png (the run's first 64 molecules, EDM verdicts) when the run completes

def property_names(data_cfg: dict) -> list[str]:
    """``data.properties`` as a list of distinct names (a single name may be given as a string)."""
    names = data_cfg.get("properties") or []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names):
        raise InputError(f'data.properties must be a list of property names, e.g. data.properties=["alpha"], '
                         f"got {names!r}")
    names = [n.strip() for n in names]
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise InputError(f"data.properties lists '{dup}' twice")
    return names


def conditioning_order(data_config: dict) -> list[str]:
    """The conditioning properties of a model in the order of the network's input columns: sorted
    by name. Checkpoints store ``data_config`` as JSON with sorted keys, so the order of the
    ``properties`` table itself is not kept; training and generation both use this order."""
    return sorted(data_config.get("properties") or {})


def requested_properties(cfg: dict, data_config: dict) -> dict[str, float] | None:
    """The property values to generate for (``sample.properties``), checked against the model:
    None for an unconditional model; InputError when a conditioned model gets none or only some,
    an unconditional one gets any, a name is unknown or a value is not a finite number."""
    props = data_config.get("properties") or {}
    s = cfg.get("sample") or {}
    wanted = s.get("properties") or {}
    if not isinstance(wanted, dict):
        raise InputError(f"sample.properties must be a table of property values, e.g. sample.properties.alpha=70, "
                         f"got {wanted!r}")
    if not props:
        if wanted:
            raise InputError(f"molecules: this model was trained without properties (unconditional), so it cannot be "
                             f"conditioned on {', '.join(wanted)}; leave out sample.properties")
        return None
    unknown = [k for k in wanted if k not in props]
    if unknown:
        raise InputError(f"molecules: unknown property '{unknown[0]}' in sample.properties; this model is conditioned "
                         f"on {', '.join(props)}")
    missing = [k for k in props if k not in wanted]
    if missing:
        raise InputError(f"molecules: this model is conditioned on {', '.join(props)}; give a value for each, e.g. "
                         + " ".join(f"sample.properties.{k}=VALUE" for k in missing))
    values = {}
    for k in props:
        v = wanted[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise InputError(f"sample.properties.{k} must be a finite number, got {v!r}")
        values[k] = float(v)
    return values


def molecules_of(objects: Sequence[Any]) -> list[Molecule]:
    """The molecules of what ``read`` returned for some files (a list per file), in order."""
    return [m for o in objects for m in (o if isinstance(o, list) else [o])]


def sample_label(molecule: Molecule, path: Path) -> str:
    """A sample's label in pictures: its "seed" SD tag when it has one, else the file's name."""
    seed = molecule.properties.get("seed")
    if isinstance(seed, float) and seed.is_integer():
        return str(int(seed))
    return str(seed) if seed not in (None, "") else Path(path).stem


def bond_order_number(order: float) -> float | int:
    """RDKit's bond order as the report gives it: 1, 2 or 3, and 1.5 for an aromatic bond."""
    return int(order) if float(order).is_integer() else float(order)


NORM_ONEHOT = 4.0
NORM_CHARGE = 10.0
WEIGHTS_DIR = Path(__file__).parent / "weights"
GRID_CELL = 200  # pixels per molecule of grid.png


class MoleculesDomain(Domain):
    name = "molecules"
    description = "3D molecules with explicit hydrogens (EDM-style E(3)-equivariant diffusion; QM9, SDF, XYZ, SMILES)"
    file_suffix = ".sdf"

    def tables(self) -> dict:
        return {"model": MoleculesModel, "data": MoleculesData, "sample": MoleculesSample}

    def defaults(self) -> dict:
        return {
            "process": {"name": "polynomial", "timesteps": 1000, "power": 2.0, "precision": 1e-5},
            "objective": {"prediction": "eps", "weighting": "uniform", "time_sampler": "discrete", "timesteps": 1000},
            "train": {"batch_size": 64, "lr": 1e-4, "ema_decay": 0.9999, "adaptive_clip": True, "steps": 100000, "bf16": False,
                      "ckpt_every": 1000, "log_every": 100},
            "sample": {"sampler": "ddpm", "steps": 50, "grid": "discrete", "batch_size": 100, "shard_size": 100},
        }

    # ------------------------------------------------------------------ data
    def load_dataset(self, data_cfg: dict, split: str) -> list[Molecule]:
        from .data import QM9_PROPERTIES, load_qm9, load_user_dataset

        elements = data_cfg.get("elements") or None
        max_atoms = int(data_cfg.get("max_atoms") or 0) or None
        names = property_names(data_cfg)
        if data_cfg.get("path"):
            mols, skipped = load_user_dataset(data_cfg["path"], elements=elements, max_atoms=max_atoms,
                                              skip_bad=bool(data_cfg.get("skip_bad")), seed=int(data_cfg.get("seed", 0)),
                                              properties=names)
            if skipped and split == "train":  # the whole file is read for every split: report it once
                warnings.warn(f"molecules: skipped {len(skipped)} bad record(s) of {data_cfg['path']} "
                              f"(data.skip_bad); first: {skipped[0]}", stacklevel=2)
            every = int(data_cfg.get("valid_every", 10))
            if split == "train":
                chosen = [m for i, m in enumerate(mols) if every <= 1 or i % every != every - 1]
            else:
                chosen = [m for i, m in enumerate(mols) if every > 1 and i % every == every - 1]
            return chosen
        if data_cfg.get("source", "qm9") != "qm9":
            raise InputError(f"molecules: unknown data.source '{data_cfg.get('source')}' (use 'qm9' or set data.path)")
        unknown = [p for p in names if p not in QM9_PROPERTIES]
        if unknown:
            raise InputError(f"molecules: QM9 has no property '{unknown[0]}' (data.properties); QM9's properties: "
                             f"{', '.join(QM9_PROPERTIES)}")
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
        for name in property_names(data_cfg):
            vals = np.empty(len(train_examples), dtype=np.float64)
            for i, m in enumerate(train_examples):
                v = m.properties.get(name)
                try:
                    vals[i] = float(v)
                except (TypeError, ValueError):
                    vals[i] = np.nan
                if not np.isfinite(vals[i]):
                    raise InputError(f"molecules: training molecule {m.name!r} has no numeric value for property "
                                     f"'{name}' (data.properties), got {v!r}")
            mad = float(np.abs(vals - vals.mean()).mean())
            if not mad > 0:
                raise InputError(f"molecules: property '{name}' has the same value ({vals[0]!r}) for every training "
                                 "molecule, so it cannot condition a model (its mean absolute deviation is 0)")
            props[name] = {"mean": float(vals.mean()), "mad": mad}
        props = {k: props[k] for k in sorted(props)}  # the order of the network's inputs (conditioning_order)
        return {
            "source": "qm9" if not data_cfg.get("path") else str(data_cfg["path"]),
            "elements": [symbol(z) for z in zs],
            "atomic_numbers": zs,
            "norm_values": [1.0, NORM_ONEHOT, NORM_CHARGE],
            "size_counts": sizes.tolist(),
            "max_atoms": int(len(sizes) - 1),
            "properties": props,
            # how atom types are represented (collate, template and the network read it)
            "representation": {"atom_types": data_cfg.get("atom_types", "onehot"),
                               "type_power": float(data_cfg.get("type_power", 1.0))},
        }

    def element_columns(self, molecule: Molecule, data_config: dict) -> torch.Tensor:
        """(atoms,) long: each atom's column in the model's element set."""
        lookup = {z: i for i, z in enumerate(data_config["atomic_numbers"])}
        try:
            return torch.tensor([lookup[int(z)] for z in molecule.atomic_numbers], dtype=torch.long)
        except KeyError as e:
            raise InputError(f"molecule {molecule.name!r}: element Z={e.args[0]} is not in the model's element set "
                             f"{data_config['elements']}") from None

    def features(self, molecule: Molecule, data_config: dict, atom_types: str = "onehot") -> torch.Tensor:
        """h (float32, atoms x (K+1)): EDM's [one-hot / 4, Z / 10], or for categorical types the
        one-hot over the K elements and the mask class."""
        cols = self.element_columns(molecule, data_config)
        k = len(data_config["atomic_numbers"])
        onehot = torch.nn.functional.one_hot(cols, k + (atom_types == "categorical")).float()
        if atom_types == "categorical":
            return onehot
        z = torch.as_tensor(molecule.atomic_numbers, dtype=torch.float32).unsqueeze(1)
        return torch.cat([onehot / NORM_ONEHOT, z / NORM_CHARGE], dim=1)

    @staticmethod
    def spaces(data_cfg: dict, data_config: dict) -> dict:
        """The fields' spaces: zero-centre-of-mass positions; categorical types when asked."""
        spaces = {"pos": ZeroMean()}
        if data_cfg.get("atom_types", "onehot") == "categorical":
            spaces["h"] = Categorical(len(data_config["atomic_numbers"]), float(data_cfg.get("type_power", 1.0)))
        return spaces

    def collate(self, examples: Sequence[Molecule], data_config: dict) -> Batch:
        data_cfg = data_config.get("representation", {})
        pos = torch.cat([torch.as_tensor(m.positions, dtype=torch.float32) for m in examples])
        h = torch.cat([self.features(m, data_config, data_cfg.get("atom_types", "onehot")) for m in examples])
        idx = torch.repeat_interleave(torch.arange(len(examples)), torch.tensor([m.num_atoms for m in examples]))
        x0 = State({"pos": pos, "h": h}, len(examples), index={"pos": idx, "h": idx},
                   spaces=self.spaces(data_cfg, data_config)).project()
        names = conditioning_order(data_config)
        if not names:
            return Batch(x0, None)
        props = data_config["properties"]
        vals = torch.tensor([[(float(m.properties[k]) - props[k]["mean"]) / props[k]["mad"] for k in names]
                             for m in examples], dtype=torch.float32)
        return Batch(x0, {"properties": vals, "properties_mask": torch.ones(len(examples), dtype=torch.bool)})

    # ------------------------------------------------------------------ model
    def build_network(self, model_cfg: dict, data_config: dict, self_conditioning: bool = False) -> torch.nn.Module:
        num_features = len(data_config["atomic_numbers"]) + 1
        num_props = len(data_config.get("properties") or {})
        kind = (model_cfg or {}).get("network", "egnn")
        if kind == "egnn":
            from .egnn import build_egnn

            return build_egnn(model_cfg, num_features, num_props, self_conditioning=self_conditioning)
        if self_conditioning:
            raise InputError("molecules: self-conditioning (objective.self_conditioning > 0) needs model.network = \"egnn\"")
        if kind == "e3nn":
            from .e3nn_net import build_e3nn

            return build_e3nn(model_cfg, num_features, num_props)
        raise InputError(f"molecules: unknown model.network '{kind}' (use 'egnn' or 'e3nn')")

    def align_noise(self, x0: State, eps: State, cfg: dict) -> State:
        """With ``data.align = "ot"``: the position noise rotated and permuted within each element
        to lie closest to the molecule (Kabsch + Hungarian, ``align.align_noise``); the type noise
        stays with its atom's row."""
        if (cfg.get("data") or {}).get("align", "none") != "ot":
            return eps
        from .align import align_noise

        elements = x0["h"][:, :-1].argmax(dim=1)  # (the last column is Z/10 or the mask class)
        z = align_noise(x0["pos"], eps["pos"], elements, x0.index["pos"], x0.batch_size).noise
        return eps.like({**eps.fields, "pos": z.to(eps["pos"].dtype)})

    def null_condition(self, cfg: dict, data_config: dict) -> dict | None:
        if not data_config.get("properties"):
            return None
        # "properties_value" (the requested values in their own units, for the SD tags) rides along
        # in generation templates only; the network never reads it.
        return {"properties": 0.0, "properties_mask": False, "properties_value": float("nan")}

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
                   spaces=self.spaces(data_config.get("representation", {}), data_config))
        values = requested_properties(cfg, data_config)
        if values is None:
            return Batch(x0, None)
        props, names = data_config["properties"], conditioning_order(data_config)
        raw = torch.tensor([[values[k] for k in names]] * len(seeds), dtype=torch.float64)
        norm = torch.tensor([[(values[k] - props[k]["mean"]) / props[k]["mad"] for k in names]] * len(seeds),
                            dtype=torch.float32)
        return Batch(x0, {"properties": norm, "properties_mask": torch.ones(len(seeds), dtype=torch.bool),
                          "properties_value": raw})

    def decode(self, x0: State, cond: Any, data_config: dict) -> list[Molecule]:
        """Atom type = argmax of the one-hot part (EDM); positions as generated; ``properties`` =
        the values a conditional model generated the molecule for (from the template's condition)."""
        zs = np.asarray(data_config["atomic_numbers"])
        k = len(zs)
        pos = x0["pos"].detach().double().cpu().numpy()
        types = x0["h"][:, :k].detach().argmax(dim=1).cpu().numpy()
        idx = x0.index["pos"].cpu().numpy()
        props = [{} for _ in range(x0.batch_size)]
        names = conditioning_order(data_config)
        if names and isinstance(cond, dict) and isinstance(cond.get("properties_value"), torch.Tensor):
            vals = cond["properties_value"].detach().double().cpu().reshape(x0.batch_size, len(names)).tolist()
            mask = cond.get("properties_mask")
            use = ([True] * x0.batch_size if mask is None
                   else torch.as_tensor(mask).reshape(-1).expand(x0.batch_size).tolist())
            props = [dict(zip(names, v)) if u else {} for v, u in zip(vals, use)]
        return [Molecule(zs[types[idx == i]], pos[idx == i], props[i]) for i in range(x0.batch_size)]

    def write(self, objects: Sequence[Molecule], seeds: Sequence[int], folder: Path, data_config: dict) -> list[Path]:
        """One SDF per seed; the tags hold the seed and, for a conditional model, the property
        values the molecule was generated for (one tag per property, named like it)."""
        from .output import write_sdf

        names = conditioning_order(data_config)
        paths = []
        for mol, seed in zip(objects, seeds):
            mol.name = f"seed-{int(seed)}"
            tags = {"seed": int(seed)}
            tags.update({k: repr(float(mol.properties[k])) for k in names if k in mol.properties})
            paths.append(write_sdf(Path(folder) / f"{int(seed):08d}.sdf", [mol], [tags]))
        return paths

    def run_picture(self, files: Sequence[Path], path: Path, cfg: dict, data_config: dict) -> Path | None:
        """grid.png: 2D depictions of the run's first molecules, each captioned "seed | stable |
        valid" (EDM's verdicts, as the metrics count them) in a frame of the verdict's colour
        (``output.verdict_colour``); ``sample.grid_picture = false``: none."""
        from .metrics import molecule_verdict
        from .output import GRID_SEPARATOR, draw_grid, grid_columns, verdict_colour, verdict_legend

        if not cfg["sample"].get("grid_picture", True):
            return None
        mols = [self.read(f)[0] for f in files]
        verdicts = [molecule_verdict(m) for m in mols]
        legends = [verdict_legend(sample_label(m, f), v, GRID_SEPARATOR) for m, f, v in zip(mols, files, verdicts)]
        return draw_grid(path, mols, legends, columns=grid_columns(len(mols)), size=GRID_CELL,
                         frames=[verdict_colour(v) for v in verdicts])

    def report_item(self, path: Path, data_config: dict) -> dict | None:
        """The first molecule of a sample file as a 3D structure: its atoms (Angstrom), the bonds the
        domain infers (EDM's distance rules; aromatic ones 1.5, as the SDF writer sanitises them) and a
        caption "00000003: C7H10O2 · stable · valid"."""
        from .metrics import molecule_verdict
        from .output import rdkit_molecule, verdict_legend
        from .types import hill_formula

        path = Path(path)
        mols = self.read(path)
        mol = mols[0]
        atoms = [[s, *map(float, xyz)] for s, xyz in zip(mol.symbols, mol.positions.tolist())]
        bonds = [[b.GetBeginAtomIdx(), b.GetEndAtomIdx(), bond_order_number(b.GetBondTypeAsDouble())]
                 for b in rdkit_molecule(mol).GetBonds()]
        caption = verdict_legend(f"{path.stem}: {hill_formula(mol.symbols)}", molecule_verdict(mol))
        if len(mols) > 1:
            caption += f" (first of {len(mols)} molecules)"
        return {"kind": "molecule", "atoms": atoms, "bonds": bonds, "caption": caption}

    # ------------------------------------------------------------------ evaluation
    def read(self, path: Path) -> list[Molecule]:
        """All molecules of an SDF or XYZ file (written by sciffusion or any other tool)."""
        from .chem import ALLOWED_VALENCES, unscored_elements
        from .data import load_sdf, load_xyz

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".sdf", ".sd", ".mol"):
            mols, _ = load_sdf(path)
        elif suffix == ".xyz":
            mols, _ = load_xyz(path)
        else:
            raise InputError(f"{path}: molecules are read from .sdf or .xyz files")
        if not mols:
            raise InputError(f"{path}: no molecules in this file")
        for k, mol in enumerate(mols, start=1):
            unscored = unscored_elements(mol.atomic_numbers)
            if unscored:
                raise InputError(f"{path}: record {k} ({mol.name!r}): element {', '.join(unscored)} has no valence "
                                 f"in the metrics (they score {', '.join(ALLOWED_VALENCES)}: EDM's QM9 and GEOM "
                                 "tables), so its stability cannot be scored; --skip-bad leaves such files out")
        return mols

    def metrics(self, objects: Sequence[Any], data_config: dict, reference: Sequence[Any] | None = None) -> dict:
        """EDM metrics (percent). Novelty against the QM9 training SMILES when the model was trained
        on QM9 (``data_config["source"] == "qm9"``; the SMILES set is built once, about a minute, then cached)."""
        from .metrics import evaluate_molecules, qm9_reference_smiles

        mols = molecules_of(objects)
        if not mols:
            raise InputError("no molecules to evaluate")
        train_smiles = qm9_reference_smiles() if data_config.get("source") == "qm9" else None
        out = evaluate_molecules(mols, reference=reference, train_smiles=train_smiles)
        return {k: v for k, v in out.items() if v is not None}

    def evaluation_pictures(self, objects: Sequence[Any], metrics: Mapping[str, Any], folder: Path,
                            data_config: dict) -> list[Path]:
        """atom_types.png and bond_lengths.png (``pictures``): the element fractions and the bond-length
        densities of the molecules against QM9's training data for a QM9 model, alone otherwise."""
        from .metrics import distribution_stats
        from .pictures import (ATOM_TYPES_PICTURE, BOND_LENGTHS_PICTURE, atom_types_picture, bond_lengths_picture,
                               picture_reference)

        generated = distribution_stats(molecules_of(objects))
        reference, name = picture_reference(data_config)
        folder = Path(folder)
        return [atom_types_picture(generated, reference, folder / ATOM_TYPES_PICTURE, name),
                bond_lengths_picture(generated, reference, folder / BOND_LENGTHS_PICTURE, name)]

    # ------------------------------------------------------------------ shipped model
    def default_checkpoint(self) -> Path | None:
        path = WEIGHTS_DIR / "qm9"
        return path if (path / "checkpoint.json").is_file() else None
