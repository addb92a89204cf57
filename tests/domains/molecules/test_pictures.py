"""The molecules domain's pictures, looked at as images: the run's grid.png (cells framed in the colour
of EDM's verdict on known molecules), the evaluation pictures (atom types and bond lengths against
QM9), and what a report shows of one sample file."""

import json
import math

import numpy as np
import pytest
from PIL import Image

import sciffusion
from sciffusion.core.registry import get_domain
from sciffusion.domains.molecules.metrics import molecule_verdict
from sciffusion.domains.molecules.output import verdict_legend
from sciffusion.domains.molecules.types import Molecule

CELL = 200  # pixels per molecule of grid.png (domain.GRID_CELL)
CH = 1.09  # a C-H bond, Angstrom


def methane():
    d = CH / math.sqrt(3)
    return Molecule([6, 1, 1, 1, 1], [[0, 0, 0], [d, d, d], [-d, -d, d], [-d, d, -d], [d, -d, -d]], name="methane")


def methyl():
    """CH3, a radical: carbon with three bonds (EDM: unstable; RDKit gives it an implicit H: valid)."""
    return Molecule([6, 1, 1, 1], [[0, 0, 0], [CH, 0, 0], [-CH / 2, CH * math.sqrt(3) / 2, 0],
                                   [-CH / 2, -CH * math.sqrt(3) / 2, 0]], name="methyl")


def ch5():
    """Carbon with five hydrogens (trigonal bipyramid): pentavalent, neither stable nor valid."""
    return Molecule([6, 1, 1, 1, 1, 1], [[0, 0, 0], [0, 0, CH], [0, 0, -CH], [CH, 0, 0],
                                         [-CH / 2, CH * math.sqrt(3) / 2, 0], [-CH / 2, -CH * math.sqrt(3) / 2, 0]],
                    name="ch5")


def water():
    return Molecule([8, 1, 1], [[0, 0, 0], [0.9572, 0, 0], [-0.24, 0.9266, 0]], name="water")


def benzene():
    """Kekulé benzene: ring sides alternating 1.34 / 1.46 Angstrom (EDM: double / single), 120 degree
    angles, each H 1.09 Angstrom out from the ring's centre."""
    ring, p = [], np.zeros(3)
    for k in range(6):
        ring.append(p.copy())
        a = math.radians(60 * k)
        p = p + (1.34 if k % 2 == 0 else 1.46) * np.array([math.cos(a), math.sin(a), 0.0])
    ring = np.array(ring)
    out = ring - ring.mean(0)
    hs = ring + CH * out / np.linalg.norm(out, axis=1, keepdims=True)
    return Molecule([6] * 6 + [1] * 6, np.vstack([ring, hs]), name="benzene")


@pytest.fixture(scope="module")
def domain():
    return get_domain("molecules")


def rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def not_blank(pixels: np.ndarray) -> bool:
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    return pixels.std() > 20 and len(colours) > 10


def colour_class(pixel) -> str:
    """Which of green, amber and red a frame pixel is (judged by its hue, not by the code's constants)."""
    r, g, b = (int(v) for v in pixel)
    if g > 120 and r < 120 and b < 120:
        return "green"
    if r > 200 and 110 < g < 210 and b < 80:
        return "amber"
    if r > 150 and g < 90 and b < 90:
        return "red"
    return f"other {r, g, b}"


def frame_classes(pixels: np.ndarray, cells: int, columns: int) -> list[str]:
    """The colour class of each cell's frame (its left edge, half way down)."""
    return [colour_class(pixels[(k // columns) * CELL + CELL // 2, (k % columns) * CELL + 2]) for k in range(cells)]


def test_verdicts_of_molecules_known_from_chemistry():
    assert molecule_verdict(methane()) == {"stable": True, "valid": True}
    assert molecule_verdict(benzene()) == {"stable": True, "valid": True}
    assert molecule_verdict(methyl()) == {"stable": False, "valid": True}
    assert molecule_verdict(ch5()) == {"stable": False, "valid": False}
    assert verdict_legend("3", {"stable": True, "valid": True}) == "3 · stable · valid"
    assert verdict_legend("7", {"stable": False, "valid": False}, " | ") == "7 | unstable | invalid"


def test_grid_cells_are_framed_in_the_colour_of_their_verdict(domain, tmp_path):
    mols = [methane(), ch5(), methyl(), benzene(), water()]
    files = domain.write(mols, [10, 11, 12, 13, 14], tmp_path, {})
    cfg = domain.default_config()
    path = domain.run_picture(files, tmp_path / "grid.png", cfg, {})
    assert path == tmp_path / "grid.png"
    pixels = rgb(path)
    assert pixels.shape == (2 * CELL, 3 * CELL, 3)  # 5 molecules: 3 columns x 2 rows
    assert not_blank(pixels)
    assert frame_classes(pixels, 5, 3) == ["green", "red", "amber", "green", "green"]
    assert (pixels[CELL + 10:, 2 * CELL + 10:] == 255).all()  # the sixth cell is empty
    cfg["sample"]["grid_picture"] = False
    assert domain.run_picture(files, tmp_path / "none.png", cfg, {}) is None and not (tmp_path / "none.png").exists()


def test_report_item_of_a_written_sdf(domain, tmp_path):
    from rdkit import Chem

    mol = benzene()
    (path,) = domain.write([mol], [7], tmp_path, {})
    item = domain.report_item(path, {})
    assert item["kind"] == "molecule" and item["caption"] == "00000007: C6H6 · stable · valid"
    assert [a[0] for a in item["atoms"]] == ["C"] * 6 + ["H"] * 6
    file_mol = Chem.MolFromMolFile(str(path), sanitize=False, removeHs=False)
    xyz = np.array([a[1:] for a in item["atoms"]])
    assert np.allclose(xyz, file_mol.GetConformer().GetPositions(), atol=1e-6)
    assert np.allclose(xyz, mol.positions, atol=1e-4)
    bonds = {(min(i, j), max(i, j)): order for i, j, order in item["bonds"]}
    ring = {(k, (k + 1) % 6) if k < 5 else (0, 5) for k in range(6)}
    assert bonds == {**{b: 1.5 for b in ring}, **{(k, k + 6): 1 for k in range(6)}}

    (path,) = domain.write([ch5()], [8], tmp_path, {})
    item = domain.report_item(path, {})
    assert item["caption"] == "00000008: CH5 · unstable · invalid" and len(item["bonds"]) == 5
    assert all(isinstance(i, int) and isinstance(j, int) and order == 1 for i, j, order in item["bonds"])


def hidden_panels(pixels: np.ndarray, rows: int = 2, cols: int = 3) -> list[bool]:
    """For each panel region of a rows x cols figure: whether its inside is plain white."""
    h, w = pixels.shape[0] // rows, pixels.shape[1] // cols
    return [bool((pixels[r * h + h // 5:(r + 1) * h - h // 5, c * w + w // 5:(c + 1) * w - w // 5] == 255).all())
            for r in range(rows) for c in range(cols)]


def orange_pixels(pixels: np.ndarray) -> int:
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(((r > 220) & (g > 100) & (g < 160) & (b < 60)).sum())


def blue_pixels(pixels: np.ndarray) -> int:
    r, b = pixels[..., 0], pixels[..., 2]
    return int(((b > 150) & (r < 160) & (b - r > 60)).sum())


def test_evaluation_pictures_without_a_reference(domain, tmp_path):
    objects = [[methane()], [water()], [methane(), water()]]  # only C-H and O-H bonds
    paths = domain.evaluation_pictures(objects, {}, tmp_path, {})
    assert paths == [tmp_path / "atom_types.png", tmp_path / "bond_lengths.png"]
    atoms, bonds = rgb(paths[0]), rgb(paths[1])
    assert atoms.shape == (350, 700, 3) and bonds.shape == (600, 1200, 3)
    assert not_blank(atoms) and not_blank(bonds)
    assert blue_pixels(atoms) > 1000 and orange_pixels(atoms) == 0 and orange_pixels(bonds) == 0
    assert hidden_panels(bonds) == [False, False, True, True, True, True]  # two element pairs, two panels


def test_evaluation_pictures_against_qm9(domain, tmp_path):
    from sciffusion.domains.molecules.data import default_cache_dir, qm9_source_dir

    if qm9_source_dir() is None and not (default_cache_dir() / "qm9.npz").is_file():
        pytest.skip("no QM9 data (qm9pack is not installed)")
    objects = [[methane()], [benzene()], [water()], [methyl()]]
    paths = domain.evaluation_pictures(objects, {}, tmp_path, {"source": "qm9"})
    atoms, bonds = rgb(paths[0]), rgb(paths[1])
    assert atoms.shape == (350, 700, 3) and bonds.shape == (600, 1200, 3)
    assert blue_pixels(atoms) > 1000 and orange_pixels(atoms) > 1000  # generated and QM9 bars
    assert hidden_panels(bonds) == [False] * 6  # QM9's six most common element pairs
    assert orange_pixels(bonds) > 500


def test_sample_run_writes_its_grid_picture(tmp_path):
    out = tmp_path / "mols"
    sciffusion.sample("molecules", out, n=6, steps=5, progress=False)
    assert json.loads((out / "run.json").read_text())["picture"] == "grid.png"
    pixels = rgb(out / "grid.png")
    assert pixels.shape == (2 * CELL, 3 * CELL, 3) and not_blank(pixels)
    assert all(c in ("green", "amber", "red") for c in frame_classes(pixels, 6, 3))
