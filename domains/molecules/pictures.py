"""Evaluation pictures of generated molecules beside the reference data (``sciffusion evaluate``):

- ``atom_types.png``: the fraction of atoms of each element, generated vs the reference;
- ``bond_lengths.png``: histograms of the bond lengths (Angstrom) of the most common element pairs
  (bonds of every order pooled, EDM's bonds from :mod:`.chem`), one panel each.

Both start from :func:`.metrics.distribution_stats`, the numbers ``atom_type_tv`` and
``bond_length_w1`` are computed from, and show those distances in their titles. The reference is
QM9's training split (a spread-out subset, :func:`.metrics.qm9_reference_stats`) for a model trained
on QM9; without one the pictures show the generated molecules alone and say so.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ...core.io import InputError
from ...core.pictures import figure, save_figure
from .metrics import QM9_REFERENCE_MOLECULES, ReferenceStats, distribution_distances, qm9_reference_stats
from .types import ATOMIC_NUMBER

ATOM_TYPES_PICTURE = "atom_types.png"
BOND_LENGTHS_PICTURE = "bond_lengths.png"
GENERATED_COLOUR = "#1f77b4"  # blue
REFERENCE_COLOUR = "#ff7f0e"  # orange
BOND_PANELS = (2, 3)  # rows, columns of bond_lengths.png: the six most common element pairs
BINS = 40


def picture_reference(data_config: dict) -> tuple[ReferenceStats | None, str]:
    """(the reference distributions, their name) for a model's data config: QM9's training split
    when the model was trained on QM9 (the rule ``metrics`` uses for novelty), else (None, "")."""
    if data_config.get("source") != "qm9":
        return None, ""
    try:
        stats = qm9_reference_stats()
    except (InputError, OSError, ImportError) as e:
        warnings.warn(f"molecules: no QM9 reference for the evaluation pictures ({e})", stacklevel=2)
        return None, ""
    return stats, f"QM9 train ({QM9_REFERENCE_MOLECULES:,} molecules)"


def element_fractions(counts: dict[str, int]) -> dict[str, float]:
    """Each element's share of the atoms."""
    total = sum(counts.values())
    return {e: c / total for e, c in counts.items()} if total else {}


def by_atomic_number(elements) -> list[str]:
    """The distinct element symbols, lightest first."""
    return sorted(set(elements), key=lambda e: ATOMIC_NUMBER[e])


def pair_lengths(stats: ReferenceStats) -> dict[tuple[str, str], np.ndarray]:
    """Bond lengths per element pair, every bond order pooled (pairs as in ``stats``: sorted by
    atomic number)."""
    pooled: dict[tuple[str, str], list[np.ndarray]] = {}
    for (a, b, _order), lengths in stats.bond_lengths.items():
        pooled.setdefault((a, b), []).append(lengths)
    return {k: np.concatenate(v) for k, v in pooled.items()}


def common_pairs(lengths: dict[tuple[str, str], np.ndarray], count: int) -> list[tuple[str, str]]:
    """The ``count`` element pairs with the most bonds, most first."""
    return sorted(lengths, key=lambda k: (-len(lengths[k]), k))[:count]


def pair_label(pair: tuple[str, str]) -> str:
    """"C–H", "C–O", "O–H": hydrogen last, otherwise by atomic number."""
    a, b = pair
    return f"{b}–{a}" if a == "H" else f"{a}–{b}"


def _against(reference_name: str, what: str, value: float | None) -> str:
    if not reference_name:
        return "generated only: no reference data"
    return f"generated vs {reference_name}" + (f"; {what} = {value:.3f}" if value is not None else "")


def atom_types_picture(generated: ReferenceStats, reference: ReferenceStats | None, path: str | Path,
                       reference_name: str = "") -> Path:
    """``atom_types.png``: a bar per element and set, the fraction of atoms of that element."""
    gen = element_fractions(generated.element_counts)
    ref = element_fractions(reference.element_counts) if reference is not None else {}
    elements = by_atomic_number([*gen, *ref])
    tv = distribution_distances(generated, reference)["atom_type_tv"] if reference is not None else None
    x = np.arange(len(elements))
    width = 0.4 if reference is not None else 0.7
    with figure(1, 1, width=7, height=3.5) as (fig, axes):
        ax = axes[0][0]
        shift = -width / 2 if reference is not None else 0.0
        ax.bar(x + shift, [gen.get(e, 0.0) for e in elements], width, color=GENERATED_COLOUR,
               label=f"generated: {sum(generated.element_counts.values()):,} atoms")
        if reference is not None:
            ax.bar(x + width / 2, [ref.get(e, 0.0) for e in elements], width, color=REFERENCE_COLOUR,
                   label=f"{reference_name}: {sum(reference.element_counts.values()):,} atoms")
        ax.set_xticks(x, elements)
        ax.set_ylabel("fraction of atoms")
        ax.set_title("atom types: " + _against(reference_name, "TV", tv), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if elements:
            ax.legend(fontsize=8)
        return save_figure(fig, path)


def bond_lengths_picture(generated: ReferenceStats, reference: ReferenceStats | None, path: str | Path,
                         reference_name: str = "") -> Path:
    """``bond_lengths.png``: per common element pair (the reference's, else the generated ones'), the
    density of bond lengths of both sets; ``bond_length_w1`` (per bond type and order) in the title."""
    gen = pair_lengths(generated)
    ref = pair_lengths(reference) if reference is not None else {}
    rows, cols = BOND_PANELS
    pairs = common_pairs(ref or gen, rows * cols)
    w1 = distribution_distances(generated, reference)["bond_length_w1"] if reference is not None else None
    with figure(rows, cols, width=12, height=3.0) as (fig, axes):
        for i, ax in enumerate(axes.flat):
            if i < len(pairs):
                _bond_panel(ax, pairs[i], gen.get(pairs[i]), ref.get(pairs[i]))
            else:
                ax.set_visible(False)
        if not pairs:
            ax = axes[0][0]
            ax.set_visible(True)
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no bonds", ha="center", va="center", transform=ax.transAxes)
        fig.suptitle("bond lengths: " + _against(reference_name, "W1", w1) + (" Å" if w1 is not None else ""),
                     fontsize=11)
        return save_figure(fig, path)


def _bond_panel(ax, pair: tuple[str, str], gen: np.ndarray | None, ref: np.ndarray | None) -> None:
    """One element pair's bond-length densities: generated filled, reference outlined."""
    both = [v for v in (gen, ref) if v is not None and len(v)]
    lo, hi = min(float(v.min()) for v in both), max(float(v.max()) for v in both)
    bins = np.linspace(lo - 0.01, hi + 0.01, BINS + 1)
    if gen is not None and len(gen):
        ax.hist(gen, bins=bins, density=True, histtype="stepfilled", color=GENERATED_COLOUR, alpha=0.55,
                label=f"generated ({len(gen):,})")
    if ref is not None and len(ref):
        ax.hist(ref, bins=bins, density=True, histtype="step", color=REFERENCE_COLOUR, linewidth=1.8,
                label=f"reference ({len(ref):,})")
    ax.set_title(pair_label(pair), fontsize=10)
    ax.set_xlabel("bond length (Å)")
    ax.set_yticks([])
    ax.legend(fontsize=7)
