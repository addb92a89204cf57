"""3D molecule generation: the ``molecules`` domain (registered under ``sciffusion.domains``).

Python API: ``MoleculesDomain``; readers ``load_qm9``, ``load_sdf``, ``load_xyz``,
``smiles_to_molecules``; metrics ``evaluate_molecules``; writers ``write_sdf``, ``write_xyz``,
``draw_grid``; ``rdkit_molecule`` turns a generated molecule into an RDKit molecule.
"""

from .domain import MoleculesDomain
from .types import Molecule

__all__ = ["MoleculesDomain", "Molecule", "load_qm9", "load_sdf", "load_xyz", "smiles_to_molecules", "load_user_dataset",
           "evaluate_molecules", "write_sdf", "write_xyz", "draw_grid", "rdkit_molecule"]


def __getattr__(name):  # the readers, metrics and writers import RDKit: load them on first use
    if name in ("load_qm9", "load_sdf", "load_xyz", "smiles_to_molecules", "load_user_dataset"):
        from . import data

        return getattr(data, name)
    if name == "evaluate_molecules":
        from .metrics import evaluate_molecules

        return evaluate_molecules
    if name in ("write_sdf", "write_xyz", "draw_grid", "rdkit_molecule"):
        from . import output

        return getattr(output, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
