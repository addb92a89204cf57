"""Distance-based bond inference (the EDM rules) and conversion to RDKit, shared by the metrics and
the SDF writer.

Bond orders follow ``shared/reference/molecules.md`` exactly: for a pair at distance ``d`` (pm) with
reference single/double/triple lengths ``r1/r2/r3`` and margins ``m1 = 10, m2 = 5, m3 = 3`` pm,

* order 0 if ``d >= r1 + m1`` (or the pair has no ``r1``);
* otherwise order 1, raised to 2 if the pair has ``r2`` and ``d < r2 + m2``, and to 3 if it also
  has ``r3`` and ``d < r3 + m3``.

Reference lengths for H, C, N, O, F are the EDM table (``EDM_BONDS``). As an extension, so that
user datasets with other common elements (B, Si, P, S, Cl, Br, I, ...) get bonds at all, a pair that
is not in that table uses the sum of Pyykkö's covalent radii (single: Pyykkö & Atsumi 2009,
Chem. Eur. J. 15, 186; double: ibid. 12770; triple: Pyykkö, Riedel & Patzschke 2005, J. Chem. Phys.
122, 204303), with the same margins; multiple bonds only between elements that have a
double/triple radius in ``COVALENT_RADII_PM``. Pairs among H, C, N, O, F always use the EDM table,
so QM9 results are unaffected by the extension. Elements with no radius here get no bonds.

Allowed valences (no formal charges): H 1, C 4, N 3, O 2, F 1 (the reference, EDM's QM9 table).
Beyond it, EDM's GEOM-Drugs table (the one published GEOM results use): B 3, Al 3, Si 4, P 3 or 5,
S 4, Cl 1, As 3, Br 1, I 1, Hg 1 or 2, Bi 3 or 5. Like EDM's, it counts a divalent sulfur (thiol,
thioether) unstable. The metrics have no valence for any other element: ``unscored_elements``
names them, and ``sciffusion evaluate`` refuses such molecules rather than score them.
"""

from __future__ import annotations

import numpy as np

from .types import ATOMIC_NUMBER, SYMBOLS, Molecule

MARGINS_PM = (10.0, 5.0, 3.0)

# (r1, r2, r3) in pm; None where the pair has no such bond. From the reference page.
EDM_BONDS: dict[tuple[str, str], tuple[float | None, float | None, float | None]] = {
    ("H", "H"): (74, None, None),
    ("H", "C"): (109, None, None),
    ("H", "N"): (101, None, None),
    ("H", "O"): (96, None, None),
    ("H", "F"): (92, None, None),
    ("C", "C"): (154, 134, 120),
    ("C", "N"): (147, 129, 116),
    ("C", "O"): (143, 120, 113),
    ("C", "F"): (135, None, None),
    ("N", "N"): (145, 125, 110),
    ("N", "O"): (140, 121, None),
    ("N", "F"): (136, None, None),
    ("O", "O"): (148, 121, None),
    ("O", "F"): (142, None, None),
    ("F", "F"): (142, None, None),
}

# Covalent radii (single, double, triple) in pm, Pyykkö et al. (see module docstring); used only for
# pairs outside EDM_BONDS.
COVALENT_RADII_PM: dict[str, tuple[float, float | None, float | None]] = {
    "H": (32, None, None),
    "B": (85, 78, 73),
    "C": (75, 67, 60),
    "N": (71, 60, 54),
    "O": (63, 57, 53),
    "F": (64, None, None),
    "Si": (116, 107, 102),
    "P": (111, 102, 94),
    "S": (103, 94, 95),
    "Al": (126, None, None),
    "Cl": (99, None, None),
    "Ge": (121, 111, 114),
    "As": (121, 114, 106),
    "Se": (116, 107, 107),
    "Br": (114, None, None),
    "I": (133, None, None),
    "Hg": (133, None, None),
    "Bi": (151, None, None),
}

ALLOWED_VALENCES: dict[str, tuple[int, ...]] = {
    "H": (1,), "C": (4,), "N": (3,), "O": (2,), "F": (1,),
    # EDM's GEOM-Drugs table (see module docstring)
    "B": (3,), "Al": (3,), "Si": (4,), "P": (3, 5), "S": (4,), "Cl": (1,), "As": (3,), "Br": (1,), "I": (1,),
    "Hg": (1, 2), "Bi": (3, 5),
}

_ZMAX = len(SYMBOLS)  # atomic numbers 1.._ZMAX are known to the Molecule record
_MAX_VALENCE = 16


def reference_lengths(sym_a: str, sym_b: str) -> tuple[float | None, float | None, float | None]:
    """(r1, r2, r3) in pm for a pair of element symbols (order-free); Nones where no such bond."""
    key = (sym_a, sym_b) if (sym_a, sym_b) in EDM_BONDS else (sym_b, sym_a)
    if key in EDM_BONDS:
        return EDM_BONDS[key]
    ra, rb = COVALENT_RADII_PM.get(sym_a), COVALENT_RADII_PM.get(sym_b)
    if ra is None or rb is None:
        return (None, None, None)
    return tuple(None if (x is None or y is None) else float(x + y) for x, y in zip(ra, rb))  # type: ignore[return-value]


def bond_order(sym_a: str, sym_b: str, distance_angstrom: float) -> int:
    """Bond order (0-3) of two atoms at a distance, by the EDM rule (module docstring)."""
    r1, r2, r3 = reference_lengths(sym_a, sym_b)
    d = 100.0 * float(distance_angstrom)
    m1, m2, m3 = MARGINS_PM
    if r1 is None or not d < r1 + m1:
        return 0
    if r2 is None or not d < r2 + m2:
        return 1
    if r3 is None or not d < r3 + m3:
        return 2
    return 3


def _build_tables():
    """Thresholds (pm) indexed by atomic numbers: bond of order k exists iff d < T[k-1][za, zb]
    (and all lower orders' conditions hold). -inf where a pair has no such bond."""
    t = np.full((3, _ZMAX + 1, _ZMAX + 1), -np.inf)
    for za in range(1, _ZMAX + 1):
        for zb in range(za, _ZMAX + 1):
            lengths = reference_lengths(SYMBOLS[za - 1], SYMBOLS[zb - 1])
            for k, (r, m) in enumerate(zip(lengths, MARGINS_PM)):
                if r is not None:
                    t[k, za, zb] = t[k, zb, za] = r + m
    allowed = np.zeros((_ZMAX + 1, _MAX_VALENCE + 1), dtype=bool)
    for sym, vals in ALLOWED_VALENCES.items():
        allowed[ATOMIC_NUMBER[sym], list(vals)] = True
    return t, allowed


THRESHOLDS_PM, ALLOWED_TABLE = _build_tables()


# smallest allowed valence by atomic number: the first allowed column of ALLOWED_TABLE (0 where none)
_MIN_VALENCE = ALLOWED_TABLE.argmax(axis=1).astype(np.int64)


def _checked_z(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.int64)
    bad = (z < 1) | (z > _ZMAX)
    if bad.any():
        raise ValueError(f"atomic number {int(z[bad][0])} outside 1..{_ZMAX}")
    return z


def bond_orders_batch(atomic_numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Bond matrices for a batch of molecules of the same size: atomic numbers (B, n), positions
    (B, n, 3) in Angstrom -> (B, n, n) int8, symmetric, zero diagonal."""
    z = _checked_z(atomic_numbers)
    x = np.asarray(positions, dtype=np.float64)
    diff = x[:, :, None, :] - x[:, None, :, :]
    d = 100.0 * np.sqrt(np.einsum("bijk,bijk->bij", diff, diff))
    za, zb = z[:, :, None], z[:, None, :]
    order = np.zeros(d.shape, dtype=np.int8)
    ok = d < THRESHOLDS_PM[0][za, zb]
    order[ok] = 1
    ok &= d < THRESHOLDS_PM[1][za, zb]
    order[ok] = 2
    ok &= d < THRESHOLDS_PM[2][za, zb]
    order[ok] = 3
    n = z.shape[1]
    order[:, np.arange(n), np.arange(n)] = 0
    return order


def bond_matrix(molecule: Molecule) -> np.ndarray:
    """(n, n) int8 matrix of EDM bond orders for one molecule (vectorised)."""
    return bond_orders_batch(molecule.atomic_numbers[None], molecule.positions[None])[0]


def bond_matrices(molecules: list[Molecule]) -> list[np.ndarray]:
    """Bond matrices for many molecules, computed in one vectorised batch per atom count."""
    out: list[np.ndarray | None] = [None] * len(molecules)
    by_size: dict[int, list[int]] = {}
    for i, m in enumerate(molecules):
        by_size.setdefault(m.num_atoms, []).append(i)
    for n, idx in by_size.items():
        # Bounded chunks keep memory small for large batches of big molecules.
        chunk = max(1, 2_000_000 // max(1, n * n))
        for s in range(0, len(idx), chunk):
            part = idx[s:s + chunk]
            z = np.stack([molecules[i].atomic_numbers for i in part]) if n else np.zeros((len(part), 0), np.int64)
            x = np.stack([molecules[i].positions for i in part]) if n else np.zeros((len(part), 0, 3))
            mats = bond_orders_batch(z, x)
            for j, i in enumerate(part):
                out[i] = mats[j]
    return out  # type: ignore[return-value]


def valences(bonds: np.ndarray) -> np.ndarray:
    """Sum of bond orders per atom."""
    return np.asarray(bonds, dtype=np.int64).sum(axis=1)


def stable_atoms(atomic_numbers: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """(n,) bool: atom's valence (sum of bond orders) is an allowed valence of its element."""
    z = _checked_z(atomic_numbers)
    v = np.minimum(valences(bonds), _MAX_VALENCE + 1)
    table = np.concatenate([ALLOWED_TABLE, np.zeros((_ZMAX + 1, 1), bool)], axis=1)
    return table[z, v]


def unscored_elements(atomic_numbers) -> list[str]:
    """The elements of a molecule that have no allowed valence here (so no stability), in order."""
    present = sorted({int(z) for z in np.asarray(atomic_numbers).ravel()})
    return [SYMBOLS[z - 1] for z in present if SYMBOLS[z - 1] not in ALLOWED_VALENCES]


def under_bonded(atomic_numbers: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """(n,) bool: the atom's valence is below the smallest allowed valence of its element (False
    for elements without a valence)."""
    z = _checked_z(atomic_numbers)
    return valences(bonds) < _MIN_VALENCE[z]


def num_fragments(bonds: np.ndarray) -> int:
    """Connected components of the bond graph (a 0-atom molecule has 0, a single atom 1)."""
    n = len(bonds)
    if n == 0:
        return 0
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    ii, jj = np.nonzero(np.triu(bonds, 1))
    for a, b in zip(ii.tolist(), jj.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    return len({find(a) for a in range(n)})


def to_rdkit(molecule: Molecule, bonds: np.ndarray | None = None, conformer: bool = True):
    """An RDKit molecule with one explicit atom per atom (no formal charges), the given bond orders
    (EDM bonds by default) as single/double/triple bonds and, if ``conformer``, a 3D conformer
    with the positions. Not sanitised: call ``Chem.SanitizeMol`` to check chemistry."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    if bonds is None:
        bonds = bond_matrix(molecule)
    kinds = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    mol = Chem.RWMol()
    for z in molecule.atomic_numbers.tolist():
        mol.AddAtom(Chem.Atom(int(z)))
    ii, jj = np.nonzero(np.triu(bonds, 1))
    for a, b in zip(ii.tolist(), jj.tolist()):
        mol.AddBond(a, b, kinds[int(bonds[a, b])])
    if conformer:
        conf = Chem.Conformer(molecule.num_atoms)
        for k, (x, y, zc) in enumerate(molecule.positions.tolist()):
            conf.SetAtomPosition(k, Point3D(x, y, zc))
        conf.Set3D(True)
        mol.AddConformer(conf, assignId=True)
    out = mol.GetMol()
    if molecule.name:
        out.SetProp("_Name", molecule.name)
    return out


def embed_smiles(job: tuple[str, int]) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """``(smiles, seed)`` -> (atomic numbers, positions in Angstrom, None), or (None, None, reason).

    RDKit: parse, AddHs, ETKDG v3 embedding with ``randomSeed = seed`` (retried once from random
    coordinates), then MMFF94 optimisation when MMFF has parameters for every atom, else UFF when
    it does, else the ETKDG geometry as is. Deterministic for a given (smiles, seed). Lives here (no
    torch import) so that worker processes start fast."""
    smi, seed = job
    from rdkit import Chem, rdBase
    from rdkit.Chem import AllChem

    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smi)
        if mol is None:
            return None, None, f"cannot parse SMILES {smi!r}"
        mol = Chem.AddHs(mol)
        params = AllChem.ETKDGv3()
        params.randomSeed = int(seed)
        params.numThreads = 1
        if AllChem.EmbedMolecule(mol, params) != 0:
            params.useRandomCoords = True
            if AllChem.EmbedMolecule(mol, params) != 0:
                return None, None, f"3D embedding (ETKDG) failed for SMILES {smi!r}"
        if AllChem.MMFFHasAllMoleculeParams(mol):
            AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
        elif AllChem.UFFHasAllMoleculeParams(mol):
            AllChem.UFFOptimizeMolecule(mol, maxIters=2000)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], np.int64)
    return z, np.asarray(mol.GetConformer().GetPositions(), np.float64), None
