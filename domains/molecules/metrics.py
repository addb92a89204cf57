"""EDM-style metrics for 3D molecules with explicit hydrogens (``shared/reference/molecules.md``).

Every metric starts from the bonds inferred from distances by :mod:`.chem` (EDM rules).

Definitions (units in brackets; rates are percentages, 0-100, as in the papers' tables):

* ``atom_stability`` [%]: stable atoms / all atoms, pooled over every atom of every molecule. An
  atom is stable when the sum of its bond orders is an allowed valence of its element.
* ``molecule_stability`` [%]: molecules whose every atom is stable / molecules.
* ``validity`` [%] (EDM validity): molecules whose RDKit molecule, built from the same bonds (one
  explicit atom per atom, single/double/triple bonds, no charges, no conformer), passes
  ``Chem.SanitizeMol`` / molecules. As in EDM, RDKit may still add implicit hydrogens to
  under-bonded atoms during sanitisation, and disconnected molecules count: their canonical SMILES
  is that of the largest fragment (most atoms; the first one on ties). As in EDM, SMILES are written
  from the molecule with its explicit hydrogen atoms (``[H]C([H])([H])[H]`` for methane); that
  changes no count (every hydrogen is an atom in both the generated and the training molecules).
* ``validity_strict`` [%]: sanitisable AND a single fragment (one connected bond graph).
* ``uniqueness`` [%]: distinct canonical SMILES among the valid molecules / valid molecules.
* ``valid_and_unique`` [%] ("V x U"): distinct valid SMILES / molecules.
* ``novelty`` [%]: distinct valid SMILES absent from the training SMILES / distinct valid SMILES,
  where the training SMILES come from the same pipeline (:func:`reference_smiles`); None when no
  training SMILES are given.
* ``validity_xyz2mol`` [%]: second route, RDKit ``rdDetermineBonds.DetermineBonds`` (xyz2mol, total
  charge 0, default options) on the bare atoms and coordinates; a molecule counts when bond
  determination succeeds and the result passes ``SanitizeMol``.
* ``atom_type_tv`` [0-1]: total variation distance ``0.5 * sum_e |p_e - q_e|`` between the element
  frequency vectors (pooled over atoms) of the generated and the reference molecules.
* ``bond_type_tv`` [0-1]: the same for bond-type frequencies, a bond type being (element, element,
  order) with the two elements sorted by atomic number, counted over all inferred bonds.
* ``bond_length_w1`` [Angstrom]: ``sum_k w_k * W1(P_k, Q_k)`` where ``k`` runs over the bond types
  present in both sets, ``W1`` is the exact 1-D Wasserstein-1 distance (area between the two
  empirical CDFs) between the generated and reference distances of bonds of type ``k``, and
  ``w_k`` is the share of type ``k`` among the reference bonds of those types (weights sum to 1).
  Types missing on one side do not enter this number; ``bond_type_tv`` accounts for them.

Rates with a zero denominator are 0.0; distances that cannot be computed (no reference, or no
atoms/bonds on one side) are None.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .chem import bond_matrices, num_fragments, stable_atoms, to_rdkit
from .types import Molecule, symbol


def _pct(num: float, den: float) -> float:
    return 100.0 * num / den if den else 0.0


# ----------------------------------------------------------------------------------------- stability

def all_atoms_stable(atom_stable: np.ndarray) -> bool:
    """EDM's molecule stability from its atoms' (:func:`.chem.stable_atoms`): the molecule has atoms
    and every one of them is stable."""
    return bool(atom_stable.all()) and len(atom_stable) > 0


def molecule_stable(molecule: Molecule, bonds: np.ndarray | None = None) -> bool:
    """Whether one molecule is stable (EDM), as ``molecule_stability`` counts it."""
    if bonds is None:
        bonds = bond_matrices([molecule])[0]
    return all_atoms_stable(stable_atoms(molecule.atomic_numbers, bonds))


def stability(molecules: list[Molecule], bonds: list[np.ndarray] | None = None) -> dict:
    """{'atom_stability': %, 'molecule_stability': %} (pooled over atoms / per molecule)."""
    if bonds is None:
        bonds = bond_matrices(molecules)
    stable_total = atoms_total = stable_mols = 0
    for m, b in zip(molecules, bonds):
        ok = stable_atoms(m.atomic_numbers, b)
        stable_total += int(ok.sum())
        atoms_total += len(ok)
        stable_mols += all_atoms_stable(ok)
    return {"atom_stability": _pct(stable_total, atoms_total),
            "molecule_stability": _pct(stable_mols, len(molecules))}


# ------------------------------------------------------------------------------------------ validity

def molecule_smiles(molecule: Molecule, bonds: np.ndarray | None = None) -> tuple[str | None, int]:
    """(canonical SMILES of the largest fragment or None if not sanitisable, number of fragments)
    for one molecule, by the EDM pipeline (distances -> bonds -> RDKit -> SanitizeMol)."""
    from rdkit import Chem

    if bonds is None:
        bonds = bond_matrices([molecule])[0]
    if molecule.num_atoms == 0:
        return None, 0
    mol = to_rdkit(molecule, bonds, conformer=False)
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # RDKit raises several exception types (valence, kekulisation, ...)
        return None, num_fragments(bonds)
    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    if len(frags) > 1:
        mol = max(frags, key=lambda f: f.GetNumAtoms())
    return Chem.MolToSmiles(mol), len(frags)


def molecule_valid(molecule: Molecule, bonds: np.ndarray | None = None) -> bool:
    """Whether one molecule is valid (EDM: its RDKit molecule sanitises), as ``validity`` counts it."""
    from rdkit import rdBase

    with rdBase.BlockLogs():  # a failed sanitisation is the answer, not news for stderr
        return molecule_smiles(molecule, bonds)[0] is not None


def molecule_verdict(molecule: Molecule) -> dict[str, bool]:
    """{'stable': bool, 'valid': bool}: EDM's two judgements of one molecule, from the same bonds."""
    bonds = bond_matrices([molecule])[0]
    return {"stable": molecule_stable(molecule, bonds), "valid": molecule_valid(molecule, bonds)}


def validity(molecules: list[Molecule], bonds: list[np.ndarray] | None = None) -> dict:
    """{'validity': %, 'validity_strict': %, 'smiles': [canonical SMILES of the largest fragment
    per valid molecule, in input order], 'valid_mask': list[bool], 'connected_mask': list[bool]}."""
    from rdkit import rdBase

    if bonds is None:
        bonds = bond_matrices(molecules)
    smiles, valid_mask, connected = [], [], []
    with rdBase.BlockLogs():  # sanitisation failures are counted, not printed
        for m, b in zip(molecules, bonds):
            s, nfrag = molecule_smiles(m, b)
            valid_mask.append(s is not None)
            connected.append(nfrag == 1)
            if s is not None:
                smiles.append(s)
    n = len(molecules)
    strict = sum(v and c for v, c in zip(valid_mask, connected))
    return {"validity": _pct(len(smiles), n), "validity_strict": _pct(strict, n), "smiles": smiles,
            "valid_mask": valid_mask, "connected_mask": connected}


def uniqueness_novelty(valid_smiles: list[str], n_generated: int, train_smiles=None) -> dict:
    """{'uniqueness': %, 'valid_and_unique': %, 'novelty': % or None} from the valid molecules'
    SMILES (one per valid molecule) and the number of generated molecules."""
    distinct = set(valid_smiles)
    out = {"uniqueness": _pct(len(distinct), len(valid_smiles)),
           "valid_and_unique": _pct(len(distinct), n_generated),
           "novelty": None}
    if train_smiles is not None:
        train = train_smiles if isinstance(train_smiles, (set, frozenset)) else set(train_smiles)
        out["novelty"] = _pct(sum(s not in train for s in distinct), len(distinct))
    return out


def reference_smiles(train_molecules: list[Molecule], cache_path: str | Path | None = None) -> set[str]:
    """Canonical SMILES (largest fragment) of the valid training molecules, by the same pipeline as
    :func:`validity`: the set novelty is measured against. With ``cache_path``, the set is read from
    that text file when it was made from the same molecules (a hash of atoms and positions in the
    header), and written there (atomically) otherwise."""
    from ...core.io import atomic_write_text

    key = _molecules_hash(train_molecules) if cache_path is not None else None
    if cache_path is not None:
        p = Path(cache_path)
        if p.is_file():
            lines = p.read_text().splitlines()
            if lines and lines[0] == f"# sciffusion reference smiles v1 {key}":
                return set(lines[1:])
    result = set(validity(train_molecules)["smiles"])
    if cache_path is not None:
        atomic_write_text(cache_path, "\n".join([f"# sciffusion reference smiles v1 {key}", *sorted(result)]) + "\n")
    return result


def qm9_reference_smiles(cache_dir: str | Path | None = None) -> set[str]:
    """:func:`reference_smiles` of the QM9 training split (EDM split), cached as
    ``train_smiles_v1.txt`` beside the QM9 cache (:func:`.data.default_cache_dir`). The first call
    takes about a minute."""
    from .data import default_cache_dir, load_qm9

    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return reference_smiles(load_qm9("train", folder), folder / "train_smiles_v1.txt")


def _molecules_hash(molecules: list[Molecule]) -> str:
    h = hashlib.sha256()
    for m in molecules:
        h.update(np.int64(m.num_atoms).tobytes())
        h.update(np.ascontiguousarray(m.atomic_numbers, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(m.positions, dtype=np.float64).tobytes())
    return h.hexdigest()[:32]


def xyz2mol_validity(molecules: list[Molecule], max_iterations: int = 0) -> dict:
    """{'validity_xyz2mol': %}: share of molecules for which RDKit's DetermineBonds (charge 0) on
    the bare atoms and coordinates succeeds and the result passes SanitizeMol. ``max_iterations``
    bounds RDKit's bond-order search (0: no bound; a molecule that exceeds it counts as invalid)."""
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdDetermineBonds

    ok = 0
    with rdBase.BlockLogs():
        for m in molecules:
            if m.num_atoms == 0:
                continue
            mol = Chem.Mol(to_rdkit(m, np.zeros((m.num_atoms, m.num_atoms), np.int8), conformer=True))
            try:
                rdDetermineBonds.DetermineBonds(mol, charge=0, maxIterations=max_iterations)
                Chem.SanitizeMol(mol)
            except Exception:  # no bond assignment, charge mismatch, valence errors...
                continue
            ok += 1
    return {"validity_xyz2mol": _pct(ok, len(molecules))}


# ----------------------------------------------------------------------------- distribution distances

@dataclass
class ReferenceStats:
    """What the distribution distances need from a set of molecules: element counts, bond-type
    counts and, per bond type, the sorted bonded distances (Angstrom)."""

    element_counts: dict[str, int] = field(default_factory=dict)
    bond_lengths: dict[tuple[str, str, int], np.ndarray] = field(default_factory=dict)

    @property
    def bond_counts(self) -> dict[tuple[str, str, int], int]:
        return {k: len(v) for k, v in self.bond_lengths.items()}


def distribution_stats(molecules: list[Molecule], bonds: list[np.ndarray] | None = None) -> ReferenceStats:
    """Element counts and bond lengths per bond type (elements sorted by atomic number, then the
    order), vectorised over molecules of equal size."""
    if bonds is None:
        bonds = bond_matrices(molecules)
    elem = np.zeros(0, np.int64)
    keys, dists = [], []
    by_size: dict[int, list[int]] = {}
    for i, m in enumerate(molecules):
        by_size.setdefault(m.num_atoms, []).append(i)
    for n, idx in by_size.items():
        if n == 0:
            continue
        z = np.stack([molecules[i].atomic_numbers for i in idx])
        elem = np.bincount(z.ravel(), minlength=len(elem)) + np.pad(elem, (0, max(0, z.max() + 1 - len(elem))))
        if n == 1:
            continue
        x = np.stack([molecules[i].positions for i in idx])
        b = np.stack([bonds[i] for i in idx])
        mb, ii, jj = np.nonzero(np.triu(b, 1))
        za, zb = z[mb, ii], z[mb, jj]
        keys.append((np.minimum(za, zb) * 1000 + np.maximum(za, zb)) * 10 + b[mb, ii, jj])
        dists.append(np.linalg.norm(x[mb, ii] - x[mb, jj], axis=1))
    lengths = {}
    if keys:
        key, d = np.concatenate(keys), np.concatenate(dists)
        order = np.lexsort((d, key))
        key, d = key[order], d[order]
        uniq, starts = np.unique(key, return_index=True)
        for k, s, e in zip(uniq.tolist(), starts, list(starts[1:]) + [len(key)]):
            lengths[(symbol(k // 10000), symbol((k // 10) % 1000), k % 10)] = d[s:e]
    return ReferenceStats({symbol(z): int(c) for z, c in enumerate(elem.tolist()) if c}, lengths)


#: how many QM9 training molecules the reference distributions of pictures are drawn from
QM9_REFERENCE_MOLECULES = 2000


@functools.lru_cache(maxsize=2)
def qm9_reference_stats(cache_dir: str | Path | None = None, count: int = QM9_REFERENCE_MOLECULES) -> ReferenceStats:
    """:func:`distribution_stats` of ``count`` QM9 training molecules spread evenly over the split
    (GDB order runs from small to large molecules, so not the first ones), kept in memory: the first
    call takes a few seconds (reading the QM9 cache, :func:`.data.load_qm9`)."""
    from .data import load_qm9

    train = load_qm9("train", cache_dir)
    step = max(1, len(train) // max(1, count))
    return distribution_stats(train[::step][:count])


def _tv(p: dict, q: dict) -> float | None:
    tp, tq = sum(p.values()), sum(q.values())
    if tp == 0 or tq == 0:
        return None
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0) / tp - q.get(k, 0) / tq) for k in keys)


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """Exact W1 between two 1-D empirical distributions (equal weights): integral of |F_u - F_v|."""
    u, v = np.sort(np.asarray(u, float)), np.sort(np.asarray(v, float))
    if len(u) == 0 or len(v) == 0:
        raise ValueError("W1 of an empty sample")
    grid = np.sort(np.concatenate([u, v]))
    widths = np.diff(grid)
    fu = np.searchsorted(u, grid[:-1], side="right") / len(u)
    fv = np.searchsorted(v, grid[:-1], side="right") / len(v)
    return float(np.sum(np.abs(fu - fv) * widths))


def distribution_distances(generated: ReferenceStats, reference: ReferenceStats) -> dict:
    """{'atom_type_tv', 'bond_type_tv', 'bond_length_w1'} (module docstring)."""
    common = [k for k in reference.bond_lengths if k in generated.bond_lengths]
    w1 = None
    if common:
        weights = np.array([len(reference.bond_lengths[k]) for k in common], float)
        weights /= weights.sum()
        w1 = float(sum(w * wasserstein_1d(generated.bond_lengths[k], reference.bond_lengths[k])
                       for w, k in zip(weights, common)))
    return {"atom_type_tv": _tv(generated.element_counts, reference.element_counts),
            "bond_type_tv": _tv(generated.bond_counts, reference.bond_counts),
            "bond_length_w1": w1}


# ------------------------------------------------------------------------------------------ together

def evaluate_molecules(molecules: list[Molecule], reference=None, train_smiles=None,
                       xyz2mol: bool = True) -> dict:
    """All metrics of the module docstring for generated molecules.

    ``reference``: reference molecules (list[Molecule]) or their :func:`distribution_stats`, for the
    distribution distances (None: those are None). ``train_smiles``: set of training SMILES from
    :func:`reference_smiles`, for novelty (None: novelty is None). ``xyz2mol``: also run the
    DetermineBonds route (``validity_xyz2mol`` is None without).

    Cost: about 0.5 ms a molecule for bonds + RDKit validity (100k QM9 molecules: about 45 s on one
    core), plus about as much again for xyz2mol.

    Returns a flat dict: n_molecules, n_atoms, atom_stability, molecule_stability, validity,
    validity_strict, uniqueness, valid_and_unique, novelty, validity_xyz2mol, atom_type_tv,
    bond_type_tv, bond_length_w1 (units in the module docstring)."""
    from rdkit import rdBase

    _quiet = rdBase.BlockLogs()  # sanitisation failures are what we count, not news for stderr  # noqa: F841
    molecules = list(molecules)
    bonds = bond_matrices(molecules)
    out: dict = {"n_molecules": len(molecules), "n_atoms": int(sum(m.num_atoms for m in molecules))}
    out.update(stability(molecules, bonds))
    val = validity(molecules, bonds)
    out["validity"], out["validity_strict"] = val["validity"], val["validity_strict"]
    out.update(uniqueness_novelty(val["smiles"], len(molecules), train_smiles))
    out["validity_xyz2mol"] = xyz2mol_validity(molecules)["validity_xyz2mol"] if xyz2mol else None
    out.update({"atom_type_tv": None, "bond_type_tv": None, "bond_length_w1": None})
    if reference is not None:
        ref = reference if isinstance(reference, ReferenceStats) else distribution_stats(list(reference))
        out.update(distribution_distances(distribution_stats(molecules, bonds), ref))
    return out
