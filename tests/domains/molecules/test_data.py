"""Molecule data: QM9 from qm9pack (EDM split, cache) and users' files (SDF, XYZ, SMILES)."""

import time

import numpy as np
import pytest

from sciffusion.core.io import InputError
from sciffusion.domains.molecules import data as D
from sciffusion.domains.molecules.chem import bond_matrix, stable_atoms

# ------------------------------------------------------------------------------------------------ QM9


@pytest.fixture(scope="session")
def qm9_arrays():
    """QM9 through the default cache ($SCIFFUSION_CACHE/qm9 or ~/.cache/sciffusion/qm9): the first
    run ever parses qm9pack's CSVs (about 15-30 s) and writes the cache; later runs reuse it."""
    if D.qm9_source_dir() is None:
        pytest.skip('qm9pack is not installed (pip install "sciffusion[qm9]"): no real QM9 data')
    return D.load_qm9_arrays("all")


def test_qm9_splits_and_atom_counts(qm9_arrays):
    assert len(qm9_arrays["gdb_ids"]) == D.QM9_COUNT == 130_831
    assert np.all(np.diff(qm9_arrays["gdb_ids"]) > 0)  # GDB-id order
    sizes = np.diff(qm9_arrays["offsets"])
    assert sizes.min() == 3 and sizes.max() == 29
    parts = {s: D.qm9_split_indices(s) for s in ("train", "valid", "test")}
    assert {s: len(p) for s, p in parts.items()} == {"train": 100_000, "valid": 17_748, "test": 13_083}
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(D.QM9_COUNT))
    # the split is the EDM permutation
    perm = np.random.RandomState(0).permutation(D.QM9_COUNT)
    assert np.array_equal(parts["test"], np.sort(perm[117_748:]))
    train = D.load_qm9_arrays("train")
    z = train["atomic_numbers"]
    counts = {s: int((z == n).sum()) for s, n in zip("HCNOF", (1, 6, 7, 8, 9))}
    assert counts == {"H": 923_537, "C": 635_559, "N": 101_476, "O": 140_202, "F": 2_323}
    assert len(z) == sum(counts.values())
    assert np.array_equal(train["gdb_ids"], qm9_arrays["gdb_ids"][parts["train"]])


def test_qm9_molecules_and_properties(qm9_arrays):
    allm = D.load_qm9("all")
    assert len(allm) == D.QM9_COUNT and [m.name for m in allm[:3]] == ["1", "2", "3"]
    m = allm[0]  # gdb 1: methane
    assert m.symbols == ["C", "H", "H", "H", "H"]
    assert set(m.properties) == set(D.QM9_PROPERTIES)
    assert m.properties["U0"] == pytest.approx(-40.47893) and m.properties["Cv"] == pytest.approx(6.469)
    assert m.properties["alpha"] == pytest.approx(13.21) and m.properties["mu"] == 0.0
    acetylene = allm[3]  # gdb 4, written with "0." / "1." literals in the CSV
    assert acetylene.symbols == ["C", "C", "H", "H"]
    assert acetylene.positions[0].tolist() == [0.5995394918, 0.0, 1.0]
    train_idx = D.qm9_split_indices("train")
    prior = D.atom_count_prior([allm[i] for i in train_idx])
    assert prior.sum() == 100_000 and prior[:3].sum() == 0 and len(prior) == 30
    assert np.array_equal(prior, np.bincount(np.diff(qm9_arrays["offsets"])[train_idx], minlength=30))


def test_qm9_cache_reuse_is_fast(qm9_arrays):
    t = time.perf_counter()
    again = D.load_qm9_arrays("all")
    assert time.perf_counter() - t < 15  # seconds; a rebuild takes several times longer
    assert np.array_equal(again["positions"], qm9_arrays["positions"])


def test_qm9_missing_package_message(monkeypatch, tmp_path):
    monkeypatch.setattr(D, "qm9_source_dir", lambda: None)
    with pytest.raises(InputError, match=r'pip install "sciffusion\[qm9\]"'):
        D.load_qm9("train", cache_dir=tmp_path)
    with pytest.raises(InputError, match="unknown QM9 split"):
        D.qm9_split_indices("training")


@pytest.mark.slow
def test_qm9_cache_build_and_corrupt_cache(tmp_path, monkeypatch):
    if D.qm9_source_dir() is None:
        pytest.skip('qm9pack is not installed (pip install "sciffusion[qm9]")')
    monkeypatch.setenv("SCIFFUSION_CACHE", str(tmp_path))
    (tmp_path / "qm9").mkdir()
    (tmp_path / "qm9" / "qm9.npz").write_bytes(b"not a zip file")  # e.g. from an older version
    t = time.perf_counter()
    mols = D.load_qm9("valid")
    build = time.perf_counter() - t
    assert len(mols) == 17_748 and (tmp_path / "qm9" / "qm9.npz").stat().st_size > 10_000_000
    t = time.perf_counter()
    assert len(D.load_qm9("valid")) == 17_748
    assert time.perf_counter() - t < build


# ------------------------------------------------------------------------------------------------ SDF

def _rdkit_mol(smiles, name, seed=1):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(m, randomSeed=seed)
    m.SetProp("_Name", name)
    return m


@pytest.fixture
def good_sdf(tmp_path):
    from rdkit import Chem

    path = tmp_path / "good.sdf"
    w = Chem.SDWriter(str(path))
    a = _rdkit_mol("CCO", "ethanol")
    a.SetProp("energy", "-1.5")
    a.SetProp("tag", "abc")
    w.write(a)
    w.write(_rdkit_mol("CS", "methanethiol"))
    w.write(_rdkit_mol("OC(F)F", "difluoromethanol"))
    w.close()
    return path


def test_sdf_reads_atoms_coordinates_and_fields(good_sdf):
    mols, skipped = D.load_sdf(good_sdf)
    assert skipped == [] and [m.name for m in mols] == ["ethanol", "methanethiol", "difluoromethanol"]
    assert mols[0].symbols.count("H") == 6 and mols[0].num_atoms == 9
    assert mols[0].properties == {"energy": -1.5, "tag": "abc"}
    assert np.ptp(mols[0].positions, axis=0).min() > 0  # 3D
    assert stable_atoms(mols[0].atomic_numbers, bond_matrix(mols[0])).all()


def test_sdf_bad_records_name_file_record_and_reason(good_sdf, tmp_path):
    with pytest.raises(InputError) as e:
        D.load_sdf(good_sdf, elements={"H", "C", "O", "F"})
    msg = str(e.value)
    assert str(good_sdf) in msg and "record 2" in msg and "methanethiol" in msg and "element S" in msg

    with pytest.raises(InputError, match=r"record 1 \('ethanol'\).*9 atoms, above the maximum of 8"):
        D.load_sdf(good_sdf, max_atoms=8)

    mols, skipped = D.load_sdf(good_sdf, elements=["H", "C", "O", "F"], max_atoms=8, skip_bad=True)
    assert [m.name for m in mols] == ["difluoromethanol"] and len(skipped) == 2
    assert "record 1" in skipped[0] and "record 2" in skipped[1]

    # truncated: the file ends in the middle of the second record's atom block
    text = good_sdf.read_text()
    cut = text.index("methanethiol") + 300
    trunc = tmp_path / "trunc.sdf"
    trunc.write_text(text[:cut])
    with pytest.raises(InputError) as e:
        D.load_sdf(trunc)
    assert str(trunc) in str(e.value) and "record 2" in str(e.value) and "truncated" in str(e.value)
    mols, skipped = D.load_sdf(trunc, skip_bad=True)
    assert len(mols) == 1 and len(skipped) == 1

    # an unknown element symbol in the atom block
    bad = tmp_path / "unknown.sdf"
    lines = text.split("$$$$")[0].splitlines()
    lines[4] = lines[4].replace(" C ", " Qx")
    bad.write_text("\n".join(lines) + "\n$$$$\n")
    with pytest.raises(InputError, match=r"unknown\.sdf: record 1 \('ethanol'\)"):
        D.load_sdf(bad)


def test_sdf_without_3d_or_hydrogens_is_rejected(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    flat = Chem.AddHs(Chem.MolFromSmiles("CO"))
    AllChem.Compute2DCoords(flat)
    flat.SetProp("_Name", "flat")
    Chem.MolToMolFile(flat, str(tmp_path / "flat.sdf"))
    with pytest.raises(InputError, match=r"flat\.sdf: record 1 \('flat'\).*no 3D coordinates"):
        D.load_sdf(tmp_path / "flat.sdf")
    heavy = Chem.MolFromSmiles("CO")
    AllChem.EmbedMolecule(heavy, randomSeed=1)
    Chem.MolToMolFile(heavy, str(tmp_path / "noh.sdf"))
    with pytest.raises(InputError, match=r"noh\.sdf: record 1, line 1: no hydrogen atoms.*by the file's bonds 2 of its 2 atoms"):
        D.load_sdf(tmp_path / "noh.sdf")
    assert D.load_sdf(tmp_path / "noh.sdf", require_explicit_h=False)[0][0].num_atoms == 2
    # a generated-looking molecule with an under-bonded carbon (some H present) is read as it is
    part = Chem.RWMol(_rdkit_mol("CC", "ethyl"))
    part.RemoveAtom(part.GetNumAtoms() - 1)
    Chem.MolToMolFile(part, str(tmp_path / "ethyl.sdf"))
    assert D.load_sdf(tmp_path / "ethyl.sdf")[0][0].symbols.count("H") == 5
    # no H needed at all (CF4): fine
    cf4 = _rdkit_mol("FC(F)(F)F", "cf4")
    Chem.MolToMolFile(cf4, str(tmp_path / "cf4.sdf"))
    assert D.load_sdf(tmp_path / "cf4.sdf")[0][0].num_atoms == 5


# ------------------------------------------------------------------------------------------------ XYZ

WATER = "3\nwater\nO 0.0 0.0 0.0\nH 0.757 0.586 0.0\nH -0.757 0.586 0.0\n"
METHANE = ("5\nmethane\nC 0 0 0\nH 0.629 0.629 0.629\nH -0.629 -0.629 0.629\nH -0.629 0.629 -0.629\n"
           "H 0.629 -0.629 -0.629\n")


def test_xyz_frames_and_folders(tmp_path):
    f = tmp_path / "two.xyz"
    f.write_text(WATER + METHANE)
    mols, skipped = D.load_xyz(f)
    assert skipped == [] and [m.name for m in mols] == ["water", "methane"]
    assert mols[0].symbols == ["O", "H", "H"] and mols[1].positions[1].tolist() == [0.629, 0.629, 0.629]
    assert all(stable_atoms(m.atomic_numbers, bond_matrix(m)).all() for m in mols)
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "b.xyz").write_text(METHANE)
    (folder / "a.xyz").write_text(WATER.replace("water", ""))  # empty comment: name from file
    (folder / "notes.txt").write_text("ignored")
    mols, _ = D.load_xyz(folder)
    assert [m.name for m in mols] == ["a_1", "methane"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .xyz files"):
        D.load_xyz(tmp_path / "empty")


@pytest.mark.parametrize("text, record, reason", [
    ("three\nwater\nO 0 0 0\n", "record 1, line 1", "expected the atom count"),
    ("4\nwater\nO 0 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n", "record 1 ('water')", "file ends after 3 atom lines"),
    ("3\nwater\nO 0 0 0\nH 0.757 abc 0\nH -0.757 0.586 0\n", "record 1 ('water')", "line 4: coordinate 'abc' is not a number"),
    ("3\nwater\nO 0 0 0\nXq 0.757 0.586 0\nH -0.757 0.586 0\n", "record 1 ('water')", "line 4: unknown element 'Xq'"),
    ("3\nwater\nO 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n", "record 1 ('water')", "expected 'symbol x y z'"),
])
def test_xyz_malformed_frames(tmp_path, text, record, reason):
    f = tmp_path / "bad.xyz"
    f.write_text(text)
    with pytest.raises(InputError) as e:
        D.load_xyz(f)
    msg = str(e.value)
    assert str(f) in msg and record in msg and reason in msg, msg


def test_xyz_wrong_count_line_resynchronises_with_skip_bad(tmp_path):
    f = tmp_path / "many.xyz"
    # frame 2 says 6 atoms but holds 5: the next frame's count line shows where it really ends
    f.write_text(WATER + METHANE.replace("5\n", "6\n", 1) + WATER + "x y\n" + METHANE)
    mols, skipped = D.load_xyz(f, skip_bad=True)
    assert [m.name for m in mols] == ["water", "water", "methane"]
    assert len(skipped) == 2
    assert "record 2 ('methane')" in skipped[0] and "declares 6 atoms but only 5 atom lines" in skipped[0]
    assert "record 4" in skipped[1] and "expected the atom count" in skipped[1]
    # elements and size limits
    good = tmp_path / "good.xyz"
    good.write_text(WATER + METHANE + WATER)
    with pytest.raises(InputError, match=r"good\.xyz: record 2 \('methane'\).*element C not in the allowed"):
        D.load_xyz(good, elements={"H", "O"})
    mols, skipped = D.load_xyz(good, max_atoms=4, skip_bad=True)
    assert [m.name for m in mols] == ["water", "water"]
    assert len(skipped) == 1 and "record 2 ('methane'), line 6: 5 atoms, above the maximum of 4" in skipped[0]


# --------------------------------------------------------------------------------------------- SMILES

SMILES = ["CCO", "CC(=O)O", "CC#N", "C=CC", "OC1CC1", "NC=O", "FC(F)F", "O=C1CCC1"]


def test_smiles_to_3d_is_sensible_and_process_count_independent():
    one, sk1 = D.smiles_to_molecules(SMILES, seed=3, processes=1)
    two, sk2 = D.smiles_to_molecules(SMILES, seed=3, processes=2)
    assert sk1 == sk2 == [] and len(one) == len(SMILES)
    for a, b in zip(one, two):
        assert np.array_equal(a.atomic_numbers, b.atomic_numbers) and np.array_equal(a.positions, b.positions)
    ethanol = one[0]
    assert ethanol.symbols.count("H") == 6 and ethanol.properties == {"smiles": "CCO"}
    for m in one:  # MMFF geometries pass the EDM bond rules (no aromatic rings in this list)
        assert stable_atoms(m.atomic_numbers, bond_matrix(m)).all(), m.name
    d = np.linalg.norm(ethanol.positions[:, None] - ethanol.positions[None], axis=-1)
    assert 1.45 < d[0, 1] < 1.60  # C-C
    other, _ = D.smiles_to_molecules(["CCO"], seed=4, processes=1)
    assert not np.allclose(other[0].positions, ethanol.positions)


def test_smiles_file_and_errors(tmp_path):
    f = tmp_path / "mols.smi"
    f.write_text("smiles name\nCCO ethanol\n\n# comment\nC1CC( broken\nCl\nCCCCCCCC octane\n")
    with pytest.raises(InputError) as e:
        D.load_smiles_file(f, processes=1)
    msg = str(e.value)
    assert str(f) in msg and "line 5" in msg and "cannot parse SMILES 'C1CC('" in msg
    mols, skipped = D.load_smiles_file(f, processes=1, skip_bad=True, elements={"H", "C", "N", "O", "F"},
                                       max_atoms=20)
    assert [m.name for m in mols] == ["ethanol"]
    assert len(skipped) == 3
    assert "line 6" in skipped[1] and "element Cl not in the allowed" in skipped[1]
    assert "line 7 ('octane')" in skipped[2] and "26 atoms, above the maximum of 20" in skipped[2]


def test_load_user_dataset_by_suffix(tmp_path, good_sdf):
    (tmp_path / "w.xyz").write_text(WATER)
    (tmp_path / "s.txt").write_text("CO\n")
    assert [m.name for m in D.load_user_dataset(good_sdf)[0]][0] == "ethanol"
    assert D.load_user_dataset(tmp_path / "w.xyz")[0][0].name == "water"
    assert D.load_user_dataset(tmp_path / "s.txt", processes=1)[0][0].symbols.count("H") == 4
    mols, _ = D.load_user_dataset(tmp_path)  # folder: .sdf and .xyz files, sorted by name
    assert [m.name for m in mols] == ["ethanol", "methanethiol", "difluoromethanol", "water"]
    (tmp_path / "x.pdb").write_text("")
    with pytest.raises(InputError, match="unknown molecule file type"):
        D.load_user_dataset(tmp_path / "x.pdb")
    with pytest.raises(InputError, match="no usable molecules"):
        D.load_user_dataset(tmp_path / "w.xyz", elements={"C"}, skip_bad=True)
    with pytest.raises(InputError, match="no such file"):
        D.load_user_dataset(tmp_path / "missing.sdf")
