"""EDM-style molecule metrics: hand-made molecules with verdicts derived from the reference rules
(shared/reference/molecules.md), and the reference values on real QM9 data."""

import math
import time

import numpy as np
import pytest

from sciffusion.domains.molecules import metrics as M
from sciffusion.domains.molecules.chem import (bond_matrices, bond_matrix, bond_order, num_fragments,
                                               stable_atoms, to_rdkit)
from sciffusion.domains.molecules.types import ATOMIC_NUMBER, Molecule


def mol(symbols, positions, name=""):
    return Molecule([ATOMIC_NUMBER[s] for s in symbols], np.asarray(positions, float), name=name)


def tetrahedral(center, r, sign=1.0):
    d = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float) * sign / math.sqrt(3)
    return np.asarray(center, float) + r * d


def methane(offset=(0, 0, 0), ch=1.09):
    c = np.asarray(offset, float)
    return mol(["C", "H", "H", "H", "H"], np.vstack([c, tetrahedral(c, ch)]), "methane")


def water():
    a = math.radians(104.5) / 2
    return mol(["O", "H", "H"], [[0, 0, 0], [0.96 * math.sin(a), 0.96 * math.cos(a), 0],
                                 [-0.96 * math.sin(a), 0.96 * math.cos(a), 0]], "water")


def ethene(cc=1.33):
    h = 1.09
    s, c = math.sin(math.radians(60)), math.cos(math.radians(60))
    return mol(["C", "C", "H", "H", "H", "H"],
               [[-cc / 2, 0, 0], [cc / 2, 0, 0],
                [-cc / 2 - h * c, h * s, 0], [-cc / 2 - h * c, -h * s, 0],
                [cc / 2 + h * c, h * s, 0], [cc / 2 + h * c, -h * s, 0]], "ethene")


def acetylene():
    return mol(["C", "C", "H", "H"], [[-0.60, 0, 0], [0.60, 0, 0], [-1.66, 0, 0], [1.66, 0, 0]], "acetylene")


def ethane(cc=1.53):
    """Staggered ethane along z: each carbon's three Hs on a cone at 109.5 degrees from the C-C axis."""
    ang = math.radians(180 - 109.5)
    def cone(center, phase, sign):
        return [center + 1.09 * np.array([math.sin(ang) * math.cos(phase + 2 * math.pi * k / 3),
                                          math.sin(ang) * math.sin(phase + 2 * math.pi * k / 3),
                                          sign * math.cos(ang)]) for k in range(3)]
    c1, c2 = np.zeros(3), np.array([0, 0, cc])
    return mol(["C", "C"] + ["H"] * 6, np.vstack([c1, c2, *cone(c1, 0, -1), *cone(c2, math.pi / 3, 1)]), "ethane")


def hexagon_ring(sides, ch=1.09):
    """Six ring carbons walking edges of the given lengths at 60-degree turns (closes whenever the
    alternate sides' sums balance, e.g. alternating a, b) plus one H per carbon on the outer
    bisector."""
    pts, p = [], np.zeros(3)
    for k, s in enumerate(sides):
        pts.append(p.copy())
        p = p + s * np.array([math.cos(math.radians(60 * k)), math.sin(math.radians(60 * k)), 0])
    assert np.allclose(p, 0), "ring does not close"
    pts = np.array(pts)
    hs = []
    for i in range(6):
        a, b = pts[i - 1] - pts[i], pts[(i + 1) % 6] - pts[i]
        inward = a / np.linalg.norm(a) + b / np.linalg.norm(b)
        hs.append(pts[i] - ch * inward / np.linalg.norm(inward))
    return mol(["C"] * 6 + ["H"] * 6, np.vstack([pts, hs]), "benzene")


def heavy(smiles):
    """The metrics' SMILES keep explicit hydrogens (as EDM's pipeline does); compare heavy-atom forms."""
    from rdkit import Chem

    return None if smiles is None else Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


def verdict(m):
    """(all atoms stable, EDM-valid, strict-valid, heavy-atom SMILES)."""
    b = bond_matrix(m)
    stable = bool(stable_atoms(m.atomic_numbers, b).all())
    v = M.validity([m])
    return stable, v["validity"] == 100.0, v["validity_strict"] == 100.0, heavy((v["smiles"] or [None])[0])


# ------------------------------------------------------------------------------------------ bond rule

def test_bond_order_thresholds_follow_the_table():
    # C-C: r1 154 (+10), r2 134 (+5), r3 120 (+3) pm
    assert bond_order("C", "C", 1.65) == 0
    assert bond_order("C", "C", 1.63) == 1
    assert bond_order("C", "C", 1.40) == 1
    assert bond_order("C", "C", 1.38) == 2
    assert bond_order("C", "C", 1.24) == 2
    assert bond_order("C", "C", 1.22) == 3
    # pairs without double/triple entries stay single however short
    assert bond_order("C", "F", 1.0) == 1
    assert bond_order("H", "H", 0.74) == 1 and bond_order("H", "H", 0.85) == 0
    # N-O has a double but no triple length
    assert bond_order("N", "O", 1.0) == 2
    # symmetric
    for a, b, d in [("H", "C", 1.1), ("C", "N", 1.2), ("O", "C", 1.15), ("N", "F", 1.3)]:
        assert bond_order(a, b, d) == bond_order(b, a, d)


def test_vectorised_bond_matrix_matches_scalar_rule():
    rng = np.random.default_rng(0)
    syms = ["H", "C", "N", "O", "F"]
    mols = []
    for n in [1, 2, 5, 9, 9, 14]:
        s = [syms[i] for i in rng.integers(0, 5, n)]
        mols.append(mol(s, rng.uniform(0, 2.5, (n, 3))))
    for m, b in zip(mols, bond_matrices(mols)):
        assert b.shape == (m.num_atoms, m.num_atoms) and np.array_equal(b, b.T)
        for i in range(m.num_atoms):
            for j in range(m.num_atoms):
                want = 0 if i == j else bond_order(m.symbols[i], m.symbols[j],
                                                   np.linalg.norm(m.positions[i] - m.positions[j]))
                assert b[i, j] == want


# --------------------------------------------------------------------------------- hand-made verdicts

def test_methane_water_ethene_acetylene_are_stable_and_valid():
    assert verdict(methane()) == (True, True, True, "C")
    assert verdict(water()) == (True, True, True, "O")
    assert verdict(ethene()) == (True, True, True, "C=C")
    assert verdict(acetylene()) == (True, True, True, "C#C")
    b = bond_matrix(acetylene())
    assert b[0, 1] == 3 and b[0, 2] == 1 and b[0, 3] == 0
    assert bond_matrix(ethene())[0, 1] == 2
    assert verdict(ethane()) == (True, True, True, "CC")


def test_kekule_benzene_is_stable_but_aromatic_geometry_is_not():
    # Alternating 1.34 / 1.47 A: 134 < 139 (double) and 147 in [139, 164) (single), so every
    # carbon has 2 + 1 + 1 (H) = 4: stable, and RDKit perceives the ring as aromatic.
    kek = hexagon_ring([1.34, 1.47] * 3)
    assert verdict(kek) == (True, True, True, "c1ccccc1")
    # Equal 1.40 A sides (real benzene): all C-C single (140 >= 134 + 5), carbons have valence 3:
    # unstable, yet EDM validity passes because RDKit adds an implicit H to each carbon.
    reg = hexagon_ring([1.40] * 6)
    st = M.stability([reg])
    assert st["atom_stability"] == pytest.approx(50.0) and st["molecule_stability"] == 0.0
    assert verdict(reg) == (False, True, True, "C1CCCCC1")


def test_stretched_bond_breaks_stability_and_connectivity():
    m = ethane(cc=1.70)  # 170 pm >= 154 + 10: no C-C bond
    assert bond_matrix(m)[0, 1] == 0
    stable, edm_valid, strict_valid, smi = verdict(m)
    assert not stable
    assert edm_valid and not strict_valid and smi == "C"  # two CH3 (+ implicit H), largest kept
    assert num_fragments(bond_matrix(m)) == 2


def test_disconnected_pair_is_edm_valid_but_not_strict():
    m = Molecule(np.concatenate([methane().atomic_numbers, methane().atomic_numbers]),
                 np.vstack([methane().positions, methane((5, 0, 0)).positions]))
    assert verdict(m) == (True, True, False, "C")
    ev = M.evaluate_molecules([m])
    assert ev["molecule_stability"] == 100.0 and ev["validity"] == 100.0 and ev["validity_strict"] == 0.0


def test_overvalent_carbon_is_unstable_and_invalid():
    # CH5: trigonal bipyramid at 1.09 A, carbon valence 5
    pos = [[0, 0, 0], [0, 0, 1.09], [0, 0, -1.09]] + [
        [1.09 * math.cos(2 * math.pi * k / 3), 1.09 * math.sin(2 * math.pi * k / 3), 0] for k in range(3)]
    m = mol(["C"] + ["H"] * 5, pos)
    assert bond_matrix(m)[0].sum() == 5
    stable, edm_valid, strict_valid, smi = verdict(m)
    assert (stable, edm_valid, strict_valid, smi) == (False, False, False, None)
    st = M.stability([m, methane()])
    assert st["atom_stability"] == pytest.approx(100 * 10 / 11)
    assert st["molecule_stability"] == pytest.approx(50.0)


def test_to_rdkit_keeps_atoms_positions_and_no_charges():
    from rdkit import Chem

    m = ethene()
    rd = to_rdkit(m)
    assert rd.GetNumAtoms() == 6 and rd.GetNumBonds() == 5
    assert all(a.GetFormalCharge() == 0 for a in rd.GetAtoms())
    assert np.allclose(rd.GetConformer().GetPositions(), m.positions)
    Chem.SanitizeMol(rd)
    assert Chem.MolToSmiles(Chem.RemoveHs(rd)) == "C=C"


# ----------------------------------------------------------------------- uniqueness, novelty, others

def test_uniqueness_and_novelty_arithmetic():
    out = M.uniqueness_novelty(["C", "C", "O", "CC"], n_generated=5, train_smiles={"C", "N"})
    assert out["uniqueness"] == pytest.approx(75.0)         # 3 distinct / 4 valid
    assert out["valid_and_unique"] == pytest.approx(60.0)   # 3 distinct / 5 generated
    assert out["novelty"] == pytest.approx(200 / 3)         # O, CC not in train / 3 distinct
    assert M.uniqueness_novelty([], 0)["uniqueness"] == 0.0


def test_evaluate_end_to_end_with_reference_and_novelty(tmp_path):
    gen = [methane(), methane((1, 2, 3)), water(), ethene(), mol(["C", "H", "H", "H", "H", "H"],
           [[0, 0, 0], [0, 0, 1.09], [0, 0, -1.09], [1.09, 0, 0], [-0.545, 0.944, 0], [-0.545, -0.944, 0]])]
    train = [methane(), acetylene()]
    ref = M.reference_smiles(train, cache_path=tmp_path / "train.smi")
    assert {heavy(s) for s in ref} == {"C", "C#C"}
    ev = M.evaluate_molecules(gen, reference=train, train_smiles=ref, xyz2mol=True)
    assert ev["n_molecules"] == 5 and ev["n_atoms"] == 5 + 5 + 3 + 6 + 6
    assert ev["molecule_stability"] == pytest.approx(80.0)
    assert ev["validity"] == pytest.approx(80.0)             # CH5 fails
    assert ev["uniqueness"] == pytest.approx(75.0)           # C, O, C=C among C, C, O, C=C
    assert ev["valid_and_unique"] == pytest.approx(60.0)
    assert ev["novelty"] == pytest.approx(200 / 3)           # O and C=C are new
    assert ev["validity_xyz2mol"] == pytest.approx(80.0)
    assert 0 < ev["atom_type_tv"] < 1 and 0 <= ev["bond_type_tv"] <= 1 and ev["bond_length_w1"] >= 0


def test_reference_smiles_cache_is_reused(tmp_path, monkeypatch):
    path = tmp_path / "ref.smi"
    first = M.reference_smiles([methane(), water()], cache_path=path)
    monkeypatch.setattr(M, "validity", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    assert M.reference_smiles([methane(), water()], cache_path=path) == first
    assert {heavy(s) for s in first} == {"C", "O"}
    monkeypatch.undo()
    # other molecules: the cache does not apply
    assert {heavy(s) for s in M.reference_smiles([ethene()], cache_path=path)} == {"C=C"}


def test_distribution_distances():
    assert M.wasserstein_1d([0.0, 1.0], [1.0, 2.0]) == pytest.approx(1.0)
    assert M.wasserstein_1d([0.0], [0.0, 1.0]) == pytest.approx(0.5)
    a, b = methane(ch=1.09), methane(ch=1.10)
    d = M.distribution_distances(M.distribution_stats([a]), M.distribution_stats([b]))
    assert d["atom_type_tv"] == 0.0 and d["bond_type_tv"] == 0.0
    assert d["bond_length_w1"] == pytest.approx(0.01)
    # water vs methane: elements {C .2, H .8} vs {O 1/3, H 2/3} -> TV = .5 (.2 + 1/3 + 2/15)
    d = M.distribution_distances(M.distribution_stats([a]), M.distribution_stats([water()]))
    assert d["atom_type_tv"] == pytest.approx(1 / 3)
    assert d["bond_type_tv"] == pytest.approx(1.0) and d["bond_length_w1"] is None
    stats = M.distribution_stats([ethene()])
    assert set(stats.bond_lengths) == {("H", "C", 1), ("C", "C", 2)}


def test_empty_and_single_atom_inputs():
    ev = M.evaluate_molecules([], reference=[methane()], train_smiles=set(), xyz2mol=True)
    assert ev["n_molecules"] == 0 and ev["atom_stability"] == 0.0 and ev["validity"] == 0.0
    assert ev["novelty"] == 0.0 and ev["atom_type_tv"] is None and ev["bond_length_w1"] is None
    single = [mol(["C"], [[0, 0, 0]]), mol(["H"], [[1, 1, 1]])]
    ev = M.evaluate_molecules(single, reference=[methane()], xyz2mol=True)
    assert ev["atom_stability"] == 0.0 and ev["molecule_stability"] == 0.0
    assert ev["n_atoms"] == 2 and ev["bond_length_w1"] is None


# ------------------------------------------------------------------------------------ real QM9 data

@pytest.fixture(scope="module")
def qm9_test_split():
    from sciffusion.domains.molecules.data import load_qm9, qm9_source_dir

    if qm9_source_dir() is None:
        pytest.skip('qm9pack is not installed (pip install "sciffusion[qm9]"): no real QM9 data')
    return load_qm9("test")


def _check_reference(mols, atom, molecule, valid):
    t = time.perf_counter()
    bonds = bond_matrices(mols)
    st = M.stability(mols, bonds)
    va = M.validity(mols, bonds)
    assert round(st["atom_stability"], 2) == atom
    assert round(st["molecule_stability"], 2) == molecule
    assert round(va["validity"], 2) == valid
    return time.perf_counter() - t


def test_qm9_test_split_reference_values(qm9_test_split):
    # reference: 99.34 / 95.22 / 97.74 (measured here: 99.344 / 95.215 / 97.738)
    _check_reference(qm9_test_split, 99.34, 95.22, 97.74)


@pytest.mark.slow
def test_qm9_test_split_xyz2mol(qm9_test_split):
    # The reference quotes "about 95.6 %". With RDKit 2026.9 DetermineBonds(charge=0) gives 94.66 %:
    # 134 molecules (1.02 %) fail only with "Final molecular charge (0) does not match input" (a
    # check on the charged-fragment assignment); counting them would give 95.69 %. We keep the
    # strict count and accept the band.
    v = M.xyz2mol_validity(qm9_test_split)["validity_xyz2mol"]
    assert 94.0 <= v <= 96.0


@pytest.mark.slow
def test_qm9_train_split_reference_values():
    from sciffusion.domains.molecules.data import load_qm9, qm9_source_dir

    if qm9_source_dir() is None:
        pytest.skip('qm9pack is not installed (pip install "sciffusion[qm9]"): no real QM9 data')
    mols = load_qm9("train")
    # reference: 99.36 / 95.29 / 97.67 (measured here: 99.361 / 95.293 / 97.667)
    seconds = _check_reference(mols, 99.36, 95.29, 97.67)
    assert seconds < 300
