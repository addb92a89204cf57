"""The molecule record shared by the molecules domain's readers, metrics, writers and model."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SYMBOLS = ["H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar",
           "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br",
           "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te",
           "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb",
           "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi"]
ATOMIC_NUMBER = {s: i + 1 for i, s in enumerate(SYMBOLS)}


def symbol(z: int) -> str:
    return SYMBOLS[int(z) - 1]


@dataclass
class Molecule:
    """Atoms with explicit hydrogens: atomic numbers (n,) and positions (n, 3) in Angstrom."""

    atomic_numbers: np.ndarray
    positions: np.ndarray
    properties: dict = field(default_factory=dict)
    name: str = ""

    def __post_init__(self):
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        if len(self.atomic_numbers) != len(self.positions):
            raise ValueError(f"molecule {self.name!r}: {len(self.atomic_numbers)} atoms but {len(self.positions)} positions")

    @property
    def num_atoms(self) -> int:
        return len(self.atomic_numbers)

    @property
    def symbols(self) -> list[str]:
        return [symbol(z) for z in self.atomic_numbers]


def hill_formula(symbols: list[str]) -> str:
    """The Hill formula of a list of element symbols: C then H first when there is carbon, every
    other element alphabetically, counts after symbols (1 left out): ``C7H10O2``."""
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
    first = [s for s in ("C", "H") if s in counts] if "C" in counts else []
    order = first + sorted(s for s in counts if s not in first)
    return "".join(s + (str(counts[s]) if counts[s] > 1 else "") for s in order)
