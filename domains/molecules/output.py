"""Molecule outputs that chemistry tools read: SDF (3D coordinates, bonds inferred with EDM's
distance rules, SD tags), XYZ, and a PNG grid of 2D depictions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ...core.io import atomic_path, atomic_write_text
from .chem import bond_matrix, stable_atoms, to_rdkit
from .metrics import all_atoms_stable
from .types import Molecule


def rdkit_molecule(molecule: Molecule, bonds: np.ndarray | None = None, sanitize: bool = True):
    """An RDKit molecule with the inferred bonds and the 3D conformer; sanitised when the chemistry
    allows (otherwise returned unsanitised with its property cache updated leniently)."""
    from rdkit import Chem, rdBase

    _quiet = rdBase.BlockLogs()  # a failed sanitisation is expected for some generated molecules  # noqa: F841
    mol = to_rdkit(molecule, bond_matrix(molecule) if bonds is None else bonds)
    for atom in mol.GetAtoms():
        atom.SetNoImplicit(True)  # every hydrogen is explicit
    if sanitize:
        try:
            Chem.SanitizeMol(mol)
            return mol
        except Exception:  # noqa: BLE001 - RDKit raises several sanitisation error types
            pass
    mol.UpdatePropertyCache(strict=False)
    return mol


def sdf_block(molecule: Molecule, tags: Mapping[str, object] | None = None) -> str:
    """One SDF record (V2000 molblock + SD tags + $$$$)."""
    from rdkit import Chem

    bonds = bond_matrix(molecule)
    mol = rdkit_molecule(molecule, bonds)
    block = Chem.MolToMolBlock(mol, kekulize=False)
    lines = [block.rstrip("\n")]
    stable = stable_atoms(molecule.atomic_numbers, bonds)
    all_tags = {"atoms": molecule.num_atoms, "atom_stable_fraction": f"{float(np.mean(stable)) if len(stable) else 0:.4f}",
                "molecule_stable": int(all_atoms_stable(stable))}
    all_tags.update(tags or {})
    for k, v in all_tags.items():
        lines.append(f"> <{k}>\n{v}\n")
    return "\n".join(lines) + "\n$$$$\n"


def write_sdf(path: str | Path, molecules: Sequence[Molecule], tags: Sequence[Mapping] | None = None) -> Path:
    """Write molecules to one SDF file atomically."""
    tags = tags or [{}] * len(molecules)
    atomic_write_text(path, "".join(sdf_block(m, t) for m, t in zip(molecules, tags)))
    return Path(path)


def xyz_block(molecule: Molecule, comment: str = "") -> str:
    lines = [str(molecule.num_atoms), comment.replace("\n", " ")]
    lines += [f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in zip(molecule.symbols, molecule.positions.tolist())]
    return "\n".join(lines) + "\n"


def write_xyz(path: str | Path, molecules: Sequence[Molecule], comments: Sequence[str] | None = None) -> Path:
    """Write molecules as concatenated XYZ frames, atomically."""
    comments = comments or [m.name for m in molecules]
    atomic_write_text(path, "".join(xyz_block(m, c) for m, c in zip(molecules, comments)))
    return Path(path)


#: the frame colour of a grid cell by EDM's verdict on its molecule (``verdict_colour``)
STABLE_COLOUR = (40, 160, 60)  # green: stable (and valid)
PARTLY_COLOUR = (235, 160, 20)  # amber: one of the two (valid but unstable, or stable but unsanitisable)
NEITHER_COLOUR = (205, 35, 35)  # red: neither stable nor valid
FRAME_WIDTH = 5  # pixels
GRID_SEPARATOR = " | "  # between the parts of a grid legend (RDKit draws no "·")


def verdict_legend(label: str, verdict: Mapping[str, bool], separator: str = " · ") -> str:
    """A legend like "3 · stable · valid": a label and EDM's verdict (``metrics.molecule_verdict``).
    RDKit draws legends byte by byte, so pictures take an ASCII ``separator`` (``GRID_SEPARATOR``)."""
    words = ["stable" if verdict["stable"] else "unstable", "valid" if verdict["valid"] else "invalid"]
    return separator.join([label, *words])


def verdict_colour(verdict: Mapping[str, bool]) -> tuple[int, int, int]:
    """The frame colour for EDM's verdict: green when stable and valid, amber for one of the two,
    red for neither."""
    stable, valid = bool(verdict["stable"]), bool(verdict["valid"])
    if stable and valid:
        return STABLE_COLOUR
    return PARTLY_COLOUR if stable or valid else NEITHER_COLOUR


def grid_columns(count: int, most: int = 8) -> int:
    """Columns of a near-square grid of ``count`` cells, at most ``most``."""
    return max(1, min(most, math.ceil(math.sqrt(count))))


def draw_grid(path: str | Path, molecules: Sequence[Molecule], legends: Sequence[str] | None = None,
              columns: int = 5, size: int = 220, frames: Sequence[tuple[int, int, int] | None] | None = None) -> Path:
    """A PNG grid of 2D depictions (hydrogens hidden where the molecule sanitises), ``size`` pixels
    square per cell, ``columns`` cells a row (fewer when there are fewer molecules), one legend under
    each; ``frames``: an RGB colour per molecule (or None) for a frame around its cell."""
    from rdkit import Chem, rdBase
    from rdkit.Chem import AllChem, Draw

    _quiet = rdBase.BlockLogs()  # noqa: F841
    mols = []
    for m in molecules:
        mol = rdkit_molecule(m)
        try:
            mol = Chem.RemoveHs(mol)
        except Exception:  # noqa: BLE001 - unsanitisable molecules are drawn with their hydrogens
            pass
        mol = Chem.Mol(mol)
        mol.RemoveAllConformers()
        AllChem.Compute2DCoords(mol)
        mols.append(mol)
    columns = max(1, min(columns, len(mols)))
    img = Draw.MolsToGridImage(mols, molsPerRow=columns, subImgSize=(size, size),
                               legends=list(legends) if legends else [m.name for m in molecules])
    if frames:
        img = _framed(img.convert("RGB"), frames, columns, size)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def _framed(img, frames: Sequence[tuple[int, int, int] | None], columns: int, size: int):
    """``img`` (a grid of ``size`` pixel cells) with a ``FRAME_WIDTH`` frame of each cell's colour."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    for k, colour in enumerate(frames):
        if colour is None:
            continue
        x, y = (k % columns) * size, (k // columns) * size
        draw.rectangle([x, y, x + size - 1, y + size - 1], outline=tuple(colour), width=FRAME_WIDTH)
    return img
