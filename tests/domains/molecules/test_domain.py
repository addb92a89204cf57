"""The molecules domain as the engine and a user meet it: registry, state layout, outputs, and the
CLI on a user's own SDF file."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sciffusion.api import evaluate
from sciffusion.core.registry import get_domain
from sciffusion.core.run_folder import read_log
from sciffusion.core.spaces import ZeroMean
from sciffusion.domains.molecules.chem import bond_matrix, stable_atoms
from sciffusion.domains.molecules.data import load_sdf, load_xyz
from sciffusion.domains.molecules.output import draw_grid, write_sdf, write_xyz
from sciffusion.domains.molecules.types import Molecule

SCIFFUSION = str(Path(sys.executable).parent / "sciffusion")


def water(shift=(0.0, 0.0, 0.0)):
    pos = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]]) + np.array(shift)
    return Molecule([8, 1, 1], pos, name="water")


def methane():
    d = 1.09 / math.sqrt(3)
    pos = np.array([[0, 0, 0], [d, d, d], [-d, -d, d], [-d, d, -d], [d, -d, -d]], dtype=float)
    return Molecule([6, 1, 1, 1, 1], pos, name="methane")


def ethene():
    pos = np.array([[0.0, 0.0, 0.667], [0.0, 0.0, -0.667], [0.0, 0.923, 1.232], [0.0, -0.923, 1.232],
                    [0.0, 0.923, -1.232], [0.0, -0.923, -1.232]])
    return Molecule([6, 6, 1, 1, 1, 1], pos, name="ethene")


@pytest.fixture(scope="module")
def domain():
    return get_domain("molecules")


@pytest.fixture(scope="module")
def data_config(domain):
    cfg = domain.default_config()
    cfg["data"]["elements"] = ["H", "C", "N", "O", "F"]
    return domain.data_config([water(), methane(), ethene()] * 3, cfg)


def test_registered_like_a_plugin(domain):
    assert domain.name == "molecules" and domain.file_suffix == ".sdf"
    cfg = domain.default_config()
    assert cfg["process"]["name"] == "polynomial" and cfg["model"]["network"] == "egnn"


def test_state_layout_and_decode_round_trip(domain, data_config):
    mols = [methane(), water((5.0, -2.0, 1.0)), ethene()]
    batch = domain.collate(mols, data_config)
    x0 = batch.x0
    assert isinstance(x0.space("pos"), ZeroMean) and x0.index["pos"].tolist() == [0] * 5 + [1] * 3 + [2] * 6
    for i in range(3):
        assert x0["pos"][x0.index["pos"] == i].mean(0).abs().max() < 1e-6
    # one-hot / 4 then Z / 10 (EDM's norm values)
    assert torch.allclose(x0["h"][0], torch.tensor([0, 0.25, 0, 0, 0, 0.6]))
    back = domain.decode(x0, None, data_config)
    for m, b in zip(mols, back):
        assert (b.atomic_numbers == m.atomic_numbers).all()
        assert np.allclose(b.positions, m.positions - m.positions.mean(0), atol=1e-6)


def test_unknown_element_is_a_clear_error(domain, data_config):
    from sciffusion.core.io import InputError

    with pytest.raises(InputError, match="Z=16 is not in the model's element set"):
        domain.collate([Molecule([16, 1, 1], np.zeros((3, 3)), name="h2s")], data_config)


def test_atom_counts_come_from_each_seed(domain, data_config):
    a = domain.sample_sizes([3, 4, 5, 6], data_config)
    b = domain.sample_sizes([6, 4], data_config)
    assert a[3] == b[0] and a[1] == b[1]
    assert set(a) <= {3, 5, 6}  # sizes seen in training
    tpl = domain.template([3, 4, 5, 6], domain.default_config(), data_config)
    assert tpl.x0.batch_size == 4 and tpl.x0["pos"].shape == (sum(a), 3) and tpl.cond is None


def test_sdf_and_xyz_writers_round_trip(tmp_path):
    mols = [methane(), water(), ethene()]
    write_sdf(tmp_path / "m.sdf", mols, [{"seed": i} for i in range(3)])
    back, skipped = load_sdf(tmp_path / "m.sdf")
    assert not skipped and [m.num_atoms for m in back] == [5, 3, 6]
    for m, b in zip(mols, back):
        assert (m.atomic_numbers == b.atomic_numbers).all() and np.allclose(m.positions, b.positions, atol=1e-4)
    text = (tmp_path / "m.sdf").read_text()
    assert text.count("$$$$") == 3 and "> <seed>\n2" in text and "> <molecule_stable>\n1" in text
    # the ethene record carries its double bond (EDM bond rules)
    assert (bond_matrix(ethene()) == 2).sum() == 2 and "  1  2  2  0" in text
    write_xyz(tmp_path / "m.xyz", mols)
    back, _ = load_xyz(tmp_path / "m.xyz")
    assert [m.symbols for m in back] == [m.symbols for m in mols]
    png = draw_grid(tmp_path / "grid.png", mols)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_user_files_through_the_cli(tmp_path):
    """`sciffusion evaluate molecules FILES` scores SDF and XYZ written by any tool."""
    good = [methane(), water(), ethene()]
    stretched = ethene()
    stretched.positions[1, 2] -= 0.6  # C=C stretched to 1.93 A: no C-C bond, both carbons unstable
    write_sdf(tmp_path / "a.sdf", good)
    write_xyz(tmp_path / "b.xyz", [stretched])
    assert not stable_atoms(stretched.atomic_numbers, bond_matrix(stretched)).all()
    proc = subprocess.run([SCIFFUSION, "evaluate", "molecules", tmp_path / "a.sdf", tmp_path / "b.xyz", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert m["n_molecules"] == 4 and m["molecule_stability"] == pytest.approx(75.0)
    assert m["validity_strict"] == pytest.approx(75.0)  # the stretched ethene falls apart into two fragments
    bad = tmp_path / "bad.xyz"
    bad.write_text("3\nwater\nO 0 0 0\nH 0.95 0 0\n")
    proc = subprocess.run([SCIFFUSION, "evaluate", "molecules", bad], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "bad.xyz" in proc.stderr


SMILES = ["C", "N", "O", "CC", "CO", "CN", "C=O", "C#N", "CCO", "CCN", "CC=O", "C#C", "OC=O", "NC=O", "CCC",
          "CC(C)O", "CC#N", "COC", "CNC", "C1CC1", "C1CO1", "OCCO", "NCCO", "CC(N)=O", "CC(=O)O", "C=CC", "FC",
          "FCC", "OCC=O", "N#CC#N"]


def test_train_sample_evaluate_on_a_users_sdf_file(tmp_path):
    """The chemist's path with their own molecules: SMILES -> 3D (RDKit) -> SDF, then the CLI."""
    from sciffusion.domains.molecules.data import smiles_to_molecules

    mols, skipped = smiles_to_molecules(SMILES, seed=0, processes=1)
    assert not skipped and all(m.num_atoms >= 3 for m in mols)
    sdf = write_sdf(tmp_path / "mine.sdf", mols * 2)
    run, out = tmp_path / "run", tmp_path / "gen"

    def cli(*args):
        p = subprocess.run([SCIFFUSION, *map(str, args)], capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr
        return p.stdout

    cli("train", "molecules", f"data.path={sdf}", "model.hidden=16", "model.layers=2", "train.steps=30",
        "train.batch_size=16", "train.ckpt_every=15", "train.log_every=10", "train.val_every=15", "--out", run,
        "--no-progress")
    # the validation loss with each field's share (positions, atom types...), summing to it, and its picture
    val = [r for r in read_log(run) if "val_loss" in r][-1]
    shares = {k: v for k, v in val.items() if k.startswith("val_loss/")}
    assert len(shares) > 1 and sum(shares.values()) == pytest.approx(val["val_loss"], rel=1e-9)
    from PIL import Image

    assert Image.open(run / "loss.png").size == (800, 640)  # a second panel: the loss per field
    info = json.loads(cli("info", run, "--json"))
    assert info["step"] == 30 and info["data_config"]["elements"] == ["H", "C", "N", "O", "F"]
    cli("sample", run, "-n", "12", "--steps", "10", "--batch-size", "6", "--out", out, "--no-progress")
    files = sorted(out.glob("*.sdf"))
    assert len(files) == 12
    back, _ = load_sdf(files[0])
    assert back[0].num_atoms in [m.num_atoms for m in mols]  # sizes come from the data's p(N)
    m = json.loads(cli("evaluate", "molecules", out, "--json"))
    # evaluate, reading the files back, agrees with the stability the writer computed while sampling
    tags = [sd_tags(f) for f in files]
    atoms = sum(int(t["atoms"]) for t in tags)
    stable = sum(round(float(t["atom_stable_fraction"]) * int(t["atoms"])) for t in tags)
    assert m["n_molecules"] == 12 and m["n_atoms"] == atoms
    assert m["atom_stability"] == pytest.approx(100.0 * stable / atoms)
    assert m["molecule_stability"] == pytest.approx(100.0 * sum(int(t["molecule_stable"]) for t in tags) / 12)
    # and its figures mean something: the chemist's molecules are all stable, their atoms at random places are not
    mine = evaluate("molecules", [sdf])
    scrambled = evaluate("molecules", [write_sdf(tmp_path / "scrambled.sdf", [scramble(x) for x in mols])])
    assert mine["atom_stability"] == mine["molecule_stability"] == 100.0
    assert scrambled["atom_stability"] < 50.0 and scrambled["molecule_stability"] < 10.0


def sd_tags(path: Path) -> dict[str, str]:
    """The SD tags of a one-record SDF file: {name: value}."""
    lines = path.read_text().splitlines()
    return {line[3:-1]: lines[i + 1].strip() for i, line in enumerate(lines) if line.startswith("> <")}


def scramble(mol: Molecule, seed: int = 0) -> Molecule:
    """The same atoms at uniformly random places in the molecule's bounding box."""
    rng = np.random.default_rng(seed)
    lo, hi = mol.positions.min(0), mol.positions.max(0)
    return Molecule(mol.atomic_numbers, rng.uniform(lo, hi, size=mol.positions.shape), name=mol.name)
