"""Molecule files a user hands to `sciffusion evaluate` / training that must get a clear answer:
real hydrogen-free molecules in bond-less files are read, heavy-atom skeletons are refused, atoms
at one position are refused, elements the metrics cannot score are refused (or skipped and counted
when asked), and an empty file is named."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sciffusion.api import evaluate
from sciffusion.core.io import InputError
from sciffusion.domains.molecules import data as D
from sciffusion.domains.molecules.chem import ALLOWED_VALENCES, unscored_elements
from sciffusion.domains.molecules.output import write_sdf
from sciffusion.domains.molecules.types import ATOMIC_NUMBER, Molecule

SCIFFUSION = str(Path(sys.executable).parent / "sciffusion")

# Cyanogen N#C-C#N, linear, B3LYP-like bond lengths (C#N 1.16, C-C 1.38 Angstrom): no hydrogen at all
CYANOGEN = (["N", "C", "C", "N"], [[0, 0, -1.85], [0, 0, -0.69], [0, 0, 0.69], [0, 0, 1.85]])
# Ethanol's heavy atoms only (C-C 1.52, C-O 1.43): what a writer that drops hydrogens leaves
ETHANOL_SKELETON = (["C", "C", "O"], [[0, 0, 0], [1.52, 0, 0], [2.0, 1.35, 0]])
# Sodium methoxide: Na has no valence in the metrics
SODIUM_METHOXIDE = (["C", "O", "Na", "H", "H", "H"],
                    [[0, 0, 0], [1.42, 0, 0], [3.6, 0, 0], [-0.36, 1.03, 0], [-0.36, -0.51, 0.89],
                     [-0.36, -0.51, -0.89]])


def bondless_sdf(path: Path, records) -> Path:
    """An SDF with atoms and coordinates only (no bond block), as many converters write it."""
    lines = []
    for name, (symbols, coords) in records:
        lines += [name, "  handmade01012612003D", "", f"{len(symbols):3d}  0  0  0  0  0  0  0  0  0999 V2000"]
        lines += [f"{x:10.4f}{y:10.4f}{z:10.4f} {s:<3} 0  0  0  0  0  0  0  0  0  0  0  0"
                  for s, (x, y, z) in zip(symbols, coords)]
        lines += ["M  END", "$$$$"]
    path.write_text("\n".join(lines) + "\n")
    return path


def xyz_file(path: Path, records) -> Path:
    text = ""
    for name, (symbols, coords) in records:
        text += f"{len(symbols)}\n{name}\n" + "".join(f"{s} {x} {y} {z}\n" for s, (x, y, z) in zip(symbols, coords))
    path.write_text(text)
    return path


def test_hydrogen_free_molecule_without_bonds_is_read(tmp_path):
    (mol,), skipped = D.load_sdf(bondless_sdf(tmp_path / "cyanogen.sdf", [("cyanogen", CYANOGEN)]))
    assert skipped == [] and mol.symbols == ["N", "C", "C", "N"]
    (mol,), _ = D.load_xyz(xyz_file(tmp_path / "cyanogen.xyz", [("cyanogen", CYANOGEN)]))
    assert mol.num_atoms == 4


@pytest.mark.parametrize("writer", [bondless_sdf, xyz_file])
def test_heavy_atom_skeleton_is_refused(tmp_path, writer):
    path = writer(tmp_path / f"skeleton{'.sdf' if writer is bondless_sdf else '.xyz'}",
                  [("cyanogen", CYANOGEN), ("ethanol", ETHANOL_SKELETON)])
    with pytest.raises(InputError) as e:
        (D.load_sdf if writer is bondless_sdf else D.load_xyz)(path)
    msg = str(e.value)
    assert str(path) in msg and "record 2 ('ethanol')" in msg and "no hydrogen atoms" in msg
    assert "3 of its 3 atoms" in msg and "explicit hydrogens" in msg


def test_scattered_heavy_atoms_are_a_poor_sample_not_a_skeleton(tmp_path):
    """A badly trained model's sample (five carbons, no two at bonding distance) is scored, not refused."""
    scattered = (["C"] * 5, [[0, 0, 0], [3, 0, 0], [0, 3, 0], [0, 0, 3], [3, 3, 3]])
    m = evaluate("molecules", [bondless_sdf(tmp_path / "poor.sdf", [("poor", scattered)])])
    assert m["n_molecules"] == 1 and m["atom_stability"] == 0.0


@pytest.fixture(scope="module")
def qm9():
    if D.qm9_source_dir() is None:
        pytest.skip('qm9pack is not installed (pip install "sciffusion[qm9]"): no real QM9 data')
    return D.load_qm9("all")


def test_real_qm9_molecules_without_hydrogen_pass_and_their_skeletons_do_not(qm9, tmp_path):
    symbols = {z: s for s, z in ATOMIC_NUMBER.items()}
    records = lambda mols: [(m.name, ([symbols[int(z)] for z in m.atomic_numbers], m.positions.tolist()))
                            for m in mols]
    hfree = [m for m in qm9 if not (m.atomic_numbers == 1).any()]
    assert len(hfree) == 42  # cyanogen, dicyano-oxadiazoles, ...
    mols, skipped = D.load_sdf(bondless_sdf(tmp_path / "hfree.sdf", records(hfree)))
    assert skipped == [] and len(mols) == 42
    # the same file with bond blocks (RDKit's implicit-hydrogen route) reads too
    write_sdf(tmp_path / "hfree_bonds.sdf", hfree)
    assert len(D.load_sdf(tmp_path / "hfree_bonds.sdf")[0]) == 42
    # molecules with many hydrogens, written without them, are refused (254 of these 300; the rest
    # keep enough multiple bonds by their distances to look like real H-free molecules)
    many_h = [m for m in qm9[:2000] if (m.atomic_numbers == 1).sum() >= (m.atomic_numbers > 1).sum()][:300]
    stripped = [Molecule(m.atomic_numbers[m.atomic_numbers > 1], m.positions[m.atomic_numbers > 1], name=m.name)
                for m in many_h]
    kept, skipped = D.load_sdf(bondless_sdf(tmp_path / "stripped.sdf", records(stripped)), skip_bad=True)
    assert len(skipped) >= 0.8 * len(stripped), (len(skipped), len(stripped))
    assert all("no hydrogen atoms" in s for s in skipped)


def test_atoms_at_the_same_position_are_refused(tmp_path):
    symbols, coords = ["O", "H", "H"], [[0, 0, 0], [0.9572, 0, 0], [0.9572, 0, 0]]
    for path, reader in ((bondless_sdf(tmp_path / "w.sdf", [("water", (symbols, coords))]), D.load_sdf),
                         (xyz_file(tmp_path / "w.xyz", [("water", (symbols, coords))]), D.load_xyz)):
        with pytest.raises(InputError, match=r"w\.(sdf|xyz): record 1 \('water'\).*atoms 2 and 3 are at the same "
                                             r"position"):
            reader(path)
    # 0.01 Angstrom apart is a (bad) molecule, not a broken file: it is read and scored
    coords[2] = [0.9672, 0, 0]
    assert D.load_xyz(xyz_file(tmp_path / "close.xyz", [("water", (symbols, coords))]))[0][0].num_atoms == 3


def test_valence_table_is_edms_geom_table():
    # EDM's GEOM-Drugs table, written out independently of chem.py
    geom = {"H": {1}, "C": {4}, "N": {3}, "O": {2}, "F": {1}, "B": {3}, "Al": {3}, "Si": {4}, "P": {3, 5}, "S": {4},
            "Cl": {1}, "As": {3}, "Br": {1}, "I": {1}, "Hg": {1, 2}, "Bi": {3, 5}}
    assert {s: set(v) for s, v in ALLOWED_VALENCES.items()} == geom
    assert unscored_elements(np.array([6, 8, 11, 1, 34, 11])) == ["Na", "Se"]
    assert unscored_elements(np.array([80, 83, 6])) == []


def test_evaluate_refuses_elements_without_a_valence(tmp_path):
    good = bondless_sdf(tmp_path / "good.sdf", [("water", (["O", "H", "H"], [[0, 0, 0], [0.9572, 0, 0],
                                                                               [-0.24, 0.9266, 0]]))])
    bad = bondless_sdf(tmp_path / "naome.sdf", [("sodium methoxide", SODIUM_METHOXIDE)])
    with pytest.raises(InputError, match=r"naome\.sdf: record 1 \('sodium methoxide'\): element Na has no valence"):
        evaluate("molecules", [good, bad])
    proc = subprocess.run([SCIFFUSION, "evaluate", "molecules", str(good), str(bad), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "naome.sdf" in proc.stderr and "element Na" in proc.stderr, proc.stderr
    proc = subprocess.run([SCIFFUSION, "evaluate", "molecules", str(good), str(bad), "--json", "--skip-bad"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert m["skipped"] == 1 and m["n_molecules"] == 1 and m["atom_stability"] == 100.0


def test_empty_sdf_is_named(tmp_path):
    empty = tmp_path / "empty.sdf"
    empty.write_text("")
    with pytest.raises(InputError, match=r"empty\.sdf: no molecules in this file"):
        evaluate("molecules", [empty])
